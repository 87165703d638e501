"""Serving benchmark: local-backend generation batched vs one at a time, and the gateway's overhead per request.

    .venv/bin/python bench/serving_bench.py [--concurrency 16] [--max-tokens 64] [--requests 200] [--num-threads 1]

1. Generation: the local backend (`python -m trace_engine.serving.local_server`, its own process) on a small
   Llama-architecture model built locally (hidden 256, 4 layers, fp32, CPU) with a rank-8 LoRA adapter. The same
   N chat requests (greedy) are sent one at a time, then all N at once (the micro-batcher puts them in one
   `generate` call). Tokens/s = completion tokens reported in `usage` / wall time.
2. Gateway overhead: a fake vLLM server (no generation, instant answers; its own process) called directly, and
   through a FastAPI app mounting `make_gateway_router` (its own process, uvicorn, loopback), one request at a
   time, alternating; overhead = median(via gateway) - median(direct), for plain and streaming chat requests.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402

PROMPTS = [f"Question {i}: how do I reset my password on device {i}, step by step?" for i in range(64)]
API_KEY = "bench-key"


# ---------------------------------------------------------------- child processes


@contextmanager
def child(*args: str) -> Iterator[str]:
    """Run `python bench/serving_bench.py ARGS` (a server) and yield the base URL it prints."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"child {args} exited with {proc.wait()}")
        yield json.loads(line)["base_url"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def serve_forever(app: Any) -> None:
    from trace_engine.serving.uvicorn_thread import serve_in_thread

    with serve_in_thread(app) as url:
        print(json.dumps({"base_url": url}), flush=True)
        while True:
            time.sleep(3600)


def serve_fake() -> None:
    from tests.support.fake_vllm import FakeVLLM

    serve_forever(FakeVLLM(base_model="fake-base").app)


def serve_gateway(backend_url: str) -> None:
    from fastapi import FastAPI, Request

    from api.gateway.backend import ServingBackend
    from api.gateway.router import BASE_MODEL, make_gateway_router

    def auth(request: Request) -> str:
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            raise PermissionError("bad key")
        return "bench-tenant"

    app = FastAPI()
    backend = ServingBackend(backend_url)
    app.include_router(make_gateway_router(lambda tenant, model: BASE_MODEL, backend, auth))
    serve_forever(app)


# ---------------------------------------------------------------- generation


def build_world(root: Path) -> tuple[Path, Path]:
    import torch
    from peft import LoraConfig, get_peft_model

    from trace_engine.tiny_models import DEFAULT_CORPUS, build_tiny_model, save_tiny, train_tokenizer

    tokenizer = train_tokenizer(DEFAULT_CORPUS + PROMPTS, vocab_size=512)
    model = build_tiny_model(tokenizer, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4,
                             intermediate_size=688, max_positions=1024, seed=0)
    base = save_tiny(model, tokenizer, root / "base")
    torch.manual_seed(1)
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    lora.save_pretrained(root / "adapter", safe_serialization=True)
    return base, root / "adapter"


async def timed_chats(url: str, prompts: list[str], max_tokens: int, concurrent: bool) -> tuple[float, int]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        async def one(prompt: str) -> int:
            response = await client.post("/v1/chat/completions", json={
                "model": "adapter", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "temperature": 0})
            response.raise_for_status()
            return int(response.json()["usage"]["completion_tokens"])

        start = time.perf_counter()
        if concurrent:
            tokens = await asyncio.gather(*(one(p) for p in prompts))
        else:
            tokens = [await one(p) for p in prompts]
        return time.perf_counter() - start, sum(tokens)


def bench_generation(concurrency: int, max_tokens: int, num_threads: int) -> dict[str, Any]:
    from trace_engine.serving.launcher import spawn_local_server

    with tempfile.TemporaryDirectory() as tmp:
        base, adapter = build_world(Path(tmp))
        with spawn_local_server(str(base), extra_args=["--served-model-name", "base", "--max-batch-size",
                                                       str(concurrency), "--max-wait-ms", "5",
                                                       "--num-threads", str(num_threads)]) as server:
            httpx.post(server.base_url + "/v1/load_lora_adapter",
                       json={"lora_name": "adapter", "lora_path": str(adapter)}).raise_for_status()
            prompts = PROMPTS[:concurrency]
            asyncio.run(timed_chats(server.base_url, prompts[:2], 4, False))  # warm-up
            seq_s, seq_tokens = asyncio.run(timed_chats(server.base_url, prompts, max_tokens, False))
            bat_s, bat_tokens = asyncio.run(timed_chats(server.base_url, prompts, max_tokens, True))
            stats = httpx.get(server.base_url + "/stats").json()["batcher"]
    return {
        "requests": concurrency, "max_tokens": max_tokens, "torch_threads": num_threads,
        "sequential": {"seconds": round(seq_s, 2), "tokens": seq_tokens, "tokens_per_s": round(seq_tokens / seq_s, 1)},
        "batched": {"seconds": round(bat_s, 2), "tokens": bat_tokens, "tokens_per_s": round(bat_tokens / bat_s, 1),
                    "batch_sizes": stats["recent_batch_sizes"][-4:]},
        "speedup": round((bat_tokens / bat_s) / (seq_tokens / seq_s), 2),
    }


# ---------------------------------------------------------------- gateway overhead


def bench_overhead(requests: int) -> dict[str, Any]:
    body = {"model": "fake-base", "messages": [{"role": "user", "content": "hello there how are you"}],
            "max_tokens": 16}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    results: dict[str, Any] = {}
    with (child("serve-fake") as fake_url, child("serve-gateway", fake_url) as gateway_url,
          httpx.Client(timeout=30) as client):
        for mode, extra in (("plain", {}), ("stream", {"stream": True})):
            direct: list[float] = []
            via: list[float] = []
            for i in range(requests + 20):
                for url, sink in ((fake_url, direct), (gateway_url, via)):
                    start = time.perf_counter()
                    response = client.post(url + "/v1/chat/completions", json={**body, **extra},
                                           headers=headers)
                    response.raise_for_status()
                    _ = response.content
                    if i >= 20:  # first 20 warm up connections
                        sink.append((time.perf_counter() - start) * 1000)
            results[mode] = {
                "direct_ms_p50": round(statistics.median(direct), 2),
                "gateway_ms_p50": round(statistics.median(via), 2),
                "overhead_ms_p50": round(statistics.median(via) - statistics.median(direct), 2),
                "direct_ms_p90": round(_p90(direct), 2), "gateway_ms_p90": round(_p90(via), 2),
            }
    return results


def _p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))]


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve-fake":
        serve_fake()
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "serve-gateway":
        serve_gateway(sys.argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=200, help="requests per overhead measurement")
    parser.add_argument("--num-threads", type=int, default=1, help="torch threads of the local backend")
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": machine()}
    report["gateway_overhead"] = bench_overhead(args.requests)
    print("gateway overhead:", json.dumps(report["gateway_overhead"]), flush=True)
    report["generation"] = bench_generation(args.concurrency, args.max_tokens, args.num_threads)
    print("generation:", json.dumps(report["generation"]), flush=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
