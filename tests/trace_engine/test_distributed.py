"""Two CPU processes (torchrun, gloo) score and train exactly like one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trace_engine.runtime import Runtime
from trace_engine.tiny_models import DEFAULT_CORPUS, build_tiny_model, save_tiny, train_tokenizer

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import distributed_worker  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runtime_shards_cover_everything_once():
    class FakeAccelerator:
        num_processes = 3

        def __init__(self, rank: int) -> None:
            self.process_index = rank

    items = list(range(7))
    shards = [Runtime(torch.device("cpu"), torch.float32, FakeAccelerator(r)).shard(items) for r in range(3)]
    assert shards == [[0, 1], [2, 3], [4, 5, 6]]
    assert Runtime(torch.device("cpu"), torch.float32, FakeAccelerator(2)).shard([1]) == [1]
    assert Runtime(torch.device("cpu"), torch.float32, FakeAccelerator(0)).shard([1]) == []


@pytest.mark.timeout(180)
def test_two_processes_match_one(tmp_path):
    tok = train_tokenizer(DEFAULT_CORPUS, vocab_size=300)
    model_dir = save_tiny(build_tiny_model(tok, "llama", hidden_size=32, intermediate_size=64), tok, tmp_path / "m")
    one = distributed_worker.run(str(model_dir), str(tmp_path / "one"), Runtime.create("cpu"))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(HERE / "distributed_worker.py"), str(model_dir), str(tmp_path / "two")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "result.json").read_text())

    assert one["world_size"] == 1 and two["world_size"] == 2
    assert two["scores"].keys() == one["scores"].keys()
    for sid, value in one["scores"].items():
        assert two["scores"][sid] == pytest.approx(value, rel=1e-5, abs=1e-7)
    assert two["reference_logps"] == pytest.approx(one["reference_logps"], abs=1e-5)
    assert len(two["losses"]) == 3  # one log line per step: only rank 0 writes
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)
    a = load_file(Path(one["adapter"]) / "adapter_model.safetensors")
    b = load_file(Path(two["adapter"]) / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert any("lora_B" in k and a[k].abs().max() > 0 for k in a)  # training moved the adapter
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)
    assert not list((tmp_path / "two").glob(".tmp-*"))
