from __future__ import annotations

import functools
import json

import pytest
import torch
from safetensors.torch import load_file

from trace_engine import checkpoint as ckpt
from trace_engine.config import LoraSettings, TrainConfig
from trace_engine.data.io import read_jsonl as iter_jsonl
from trace_engine.modeling import ModelSource
from trace_engine.tiny_models import DEFAULT_CORPUS, build_tiny_model, save_tiny, train_tokenizer
from trace_engine.train import train as train_on_device

train = functools.partial(train_on_device, device="cpu")  # tests are CPU tests, GPU or not

class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, ModelSource]:
    tok = train_tokenizer(DEFAULT_CORPUS)
    out = {}
    for arch in ("llama", "qwen2"):
        out[arch] = ModelSource(str(save_tiny(build_tiny_model(tok, arch), tok, tmp_path_factory.mktemp(arch))))
    return out


def rows(n: int = 10) -> list[dict]:
    cats = ("INVERT", "PUNISH", "RETAIN")
    return [
        {
            "id": str(i),
            "prompt": f"Explain how firewalls work, part {i}.",
            "chosen": "Here is a careful answer with caveats; consult official sources.",
            "rejected": "I cannot help with that request." if i % 2 else "Sorry, I can't assist with that.",
            "category": cats[i % 3],
            "impact_score": 1.0 + 0.1 * i,
        }
        for i in range(n)
    ]


def make_config(**kw) -> TrainConfig:
    # LoRA dropout on, so the restored RNG state matters; 2 epochs, so the resumed data order matters too.
    base = dict(batch_size=2, grad_accum=2, epochs=2, lr=5e-3, seed=3, checkpoint_every=2,
                lora=LoraSettings(r=4, alpha=8, dropout=0.2))
    base.update(kw)
    return TrainConfig(**base)


def crash_at(step: int):
    def progress(done: int, total: int, metrics) -> None:
        if done == step:
            raise Crash(f"simulated crash after step {done}")

    return progress


def adapter(path) -> dict[str, torch.Tensor]:
    return load_file(path / "adapter_model.safetensors")


@pytest.mark.parametrize("grouped", [False, True], ids=["shuffled", "grouped_by_length"])
def test_resumed_run_ends_with_the_same_adapter(models, tmp_path, grouped):
    config = functools.partial(make_config, group_by_length=grouped)
    full = train(rows(), config(), base=models["llama"], output_dir=tmp_path / "full")
    assert full.steps == 6  # 10 examples -> 5 micro-batches -> 3 steps per epoch, 2 epochs

    run = tmp_path / "crashy"
    with pytest.raises(Crash):
        train(rows(), config(), base=models["llama"], output_dir=run, progress=crash_at(3))
    assert ckpt.latest_checkpoint(run).name == "step-000002"
    assert [m["step"] for m in iter_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    with pytest.raises(Crash):  # crash again in the second epoch, after the step-4 checkpoint
        train(rows(), config(), base=models["llama"], output_dir=run, progress=crash_at(5))
    assert ckpt.latest_checkpoint(run).name == "step-000004"
    resumed = train(rows(), config(), base=models["llama"], output_dir=run)

    assert resumed.steps == 6
    a, b = adapter(full.output_dir), adapter(resumed.output_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    log = list(iter_jsonl(run / "metrics.jsonl"))
    assert [m["step"] for m in log] == [1, 2, 3, 4, 5, 6]  # the crashed runs' extra lines were dropped
    reference_log = list(iter_jsonl(full.metrics_path))
    assert [m["loss"] for m in log] == pytest.approx([m["loss"] for m in reference_log], abs=1e-6)
    again = train(rows(), config(), base=models["llama"], output_dir=run)  # resumes at the end: nothing to do
    assert again.steps == 6 and again.final_metrics == log[-1]
    assert all(torch.equal(adapter(again.output_dir)[k], b[k]) for k in b)


def test_a_metrics_line_torn_by_a_crash_does_not_stop_the_resume(models, tmp_path):
    """The history is one line per finished step (on disk before the next step starts); a crash mid-write
    leaves a torn last line, which the resumed run drops instead of failing on it."""
    run = tmp_path / "torn"
    with pytest.raises(Crash):
        train(rows(), make_config(), base=models["llama"], output_dir=run, progress=crash_at(3))
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as log:
        log.write('{"step": 4, "loss": 0.6')  # the power went out here
    resumed = train(rows(), make_config(), base=models["llama"], output_dir=run)
    assert [m["step"] for m in iter_jsonl(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert resumed.final_metrics["step"] == 6


def test_checkpoint_layout_is_complete_and_atomic(models, tmp_path):
    with pytest.raises(Crash):
        train(rows(), make_config(), base=models["qwen2"], output_dir=tmp_path, progress=crash_at(2))
    step = tmp_path / "checkpoints" / "step-000002"
    names = {p.name for p in step.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "trainer_state.pt", "trainer_state.json",
            ckpt.MARKER} <= names
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    state = json.loads((step / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (2, 0, 4)
    assert state["fingerprint"]["base_model"] == models["qwen2"].to_dict()
    # a directory without the marker (a crash mid-write) is never picked for resume
    partial = tmp_path / "checkpoints" / "step-000009"
    partial.mkdir()
    (partial / "trainer_state.json").write_text("{")
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000002"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"config": make_config(beta=0.5)}, r"different config: beta: 0.3 -> 0.5"),
        ({"rows": rows(11)}, "different data_hash"),
        ({"base": "qwen2"}, "different base_model"),
    ],
)
def test_resume_refuses_a_different_run(models, tmp_path, change, message):
    with pytest.raises(Crash):
        train(rows(), make_config(), base=models["llama"], output_dir=tmp_path, progress=crash_at(2))
    kwargs = {"config": make_config(), "rows": rows(), "base": "llama"}
    kwargs.update(change)
    with pytest.raises(ckpt.CheckpointMismatch, match=message):
        train(kwargs["rows"], kwargs["config"], base=models[kwargs["base"]], output_dir=tmp_path)
    with pytest.raises(ckpt.CheckpointMismatch, match="already holds checkpoints"):
        train(rows(), make_config(), base=models["llama"], output_dir=tmp_path, resume=False)
    # changing only how often checkpoints are written is allowed
    train(rows(), make_config(checkpoint_every=3), base=models["llama"], output_dir=tmp_path)


def test_rng_round_trip():
    import random

    import numpy as np

    as_json, tensors = ckpt.capture_rng()
    expected = (random.random(), float(np.random.rand()), torch.rand(1).item())
    ckpt.restore_rng(json.loads(json.dumps(as_json)), tensors)
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == expected

