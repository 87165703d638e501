"""The synthetic world's base model: a tiny Llama/Qwen2 LM fine-tuned to follow the OLD policy.

Recipe: train a byte-level BPE tokenizer on the world's train text, build a tiny causal LM, and run plain supervised
fine-tuning (causal LM loss on response tokens only, prompts in the tokenizer's chat template) on OLD-preferred
responses to train prompts plus the retention questions' answers. The result is cached on disk under a key that
hashes the recipe, the world's content and `CODE_VERSION`, so tests and demos train it once. The cache folder is
filled in a temp folder and renamed into place: a crash never leaves a half-written model that looks complete.

`python -m trace_engine.synthetic.base_model` trains (or loads) the default model and prints its evaluation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from trace_engine.config import LengthLimits
from trace_engine.data.pairs import Prompt, sha256_text
from trace_engine.logprobs import token_logps
from trace_engine.synthetic import policies as pol
from trace_engine.synthetic import vocab
from trace_engine.synthetic.world import PAIR_KINDS, TRAIN_MIX, World, make_world, retention_facts
from trace_engine.tiny_models import build_tiny_model, save_tiny, train_tokenizer
from trace_engine.tokenization import collate, encode_sequences, pad_id_of, tokenize_prompts

CODE_VERSION = "synthetic-base-v2"
"""Bump whenever the training code changes in a way that changes the model (the world's content is hashed)."""

COMPLETE_MARKER = "COMPLETE"
PROGRESS_EVERY_S = 10.0
"""Training progress is logged at the first and last step and at least this often in between (ETA included), so a
first run (minutes on a laptop CPU) is never silent."""


@dataclass(frozen=True)
class BaseModelRecipe:
    """Everything that determines the base model; its hash is the cache key."""

    world_seed: int = 0
    sft_pairs: int = 2500  # OLD-preferred (prompt, response) examples from train pairs
    retention_repeats: int = 6  # copies of every retention question in the SFT data
    rejected_share: float = 0.25  # educational pairs whose OLD-rejected answer (cautious/plain) is also SFT data
    vocab_size: int = 1000
    arch: str = "llama"
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 20
    train_seed: int = 0
    max_prompt_len: int = 64
    max_len: int = 128
    code_version: str = CODE_VERSION

    def key(self) -> str:
        """Cache key: recipe fields + the world's content fingerprint."""
        recipe = json.dumps(asdict(self), sort_keys=True)
        return sha256_text("synthetic-base-model", recipe, world_fingerprint())[:20]


@dataclass
class BaseModel:
    """A cached base model folder (standard HF layout, safetensors) and how it was made."""

    path: Path
    recipe: BaseModelRecipe
    trained_now: bool  # False: found in the cache
    metrics: dict[str, Any] = field(default_factory=dict)

    def load(self):
        """(model in eval mode on CPU, tokenizer)."""
        return load_base_model(self.path)


def world_fingerprint() -> str:
    """Hash of the world's content (templates, slots, answers, policies, mixes), so editing it retrains."""
    content = {name: asdict(topic) for name, topic in vocab.CONTENT.items()}
    extra = [vocab.OPENERS, vocab.CLOSERS, vocab.CAPITALS, vocab.CAPITAL_TEMPLATES, vocab.ARITHMETIC_TEMPLATES,
             list(vocab.ARITHMETIC_RANGE), {t: {"|".join(k): w for k, w in kinds.items()}
                                             for t, kinds in PAIR_KINDS.items()}, TRAIN_MIX]
    return sha256_text(json.dumps(content, sort_keys=True), json.dumps(extra, sort_keys=True),
                       pol.OLD_POLICY_TEXT, pol.NEW_POLICY_TEXT)


def default_cache_dir() -> Path:
    """`$REALIGN_CACHE_DIR/synthetic`, else `~/.cache/realign/synthetic`."""
    root = os.environ.get("REALIGN_CACHE_DIR")
    return Path(root) / "synthetic" if root else Path.home() / ".cache" / "realign" / "synthetic"


def ensure_base_model(recipe: BaseModelRecipe | None = None, cache_dir: str | Path | None = None,
                      log: Callable[[str], None] | None = None) -> BaseModel:
    """The base model for `recipe`: from the cache when present, else trained now and cached atomically."""
    recipe = recipe or BaseModelRecipe()
    log = log or stderr_log
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / f"base-{recipe.key()}"

    def build(tmp: Path) -> dict[str, Any]:
        log(f"synthetic base model: not cached yet, training it once ({recipe.steps} steps, a few minutes on a "
            f"laptop CPU; later runs load it from {final})")
        model, tokenizer, metrics = train_base_model(recipe, log=log)
        save_tiny(model, tokenizer, tmp)
        (tmp / "recipe.json").write_text(json.dumps({**asdict(recipe), "key": recipe.key()}, indent=2) + "\n")
        return metrics

    metrics, trained = cached_build(final, build)
    if not trained:
        return BaseModel(final, recipe, False, metrics)
    log(f"synthetic base model: trained in {metrics['train_seconds']:.0f}s, cached in {final}")
    return BaseModel(final, recipe, True, metrics)


def cached_build(final: Path, build: Callable[[Path], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """(training metrics, built now): `final` from the cache when complete, else `build(tmp)` (writes the model into
    `tmp`, returns its metrics) published atomically with `train_metrics.json` and the complete marker; a concurrent
    writer that finished first wins, an incomplete leftover is replaced. Shared by every cached base model."""
    if (final / COMPLETE_MARKER).is_file():
        return _read_json(final / "train_metrics.json"), False
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        metrics = build(tmp)
        (tmp / "train_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        _fsync_tree(tmp)
        if final.exists():  # an incomplete leftover (no marker) or a concurrent writer that just finished
            if (final / COMPLETE_MARKER).is_file():
                shutil.rmtree(tmp)
                return _read_json(final / "train_metrics.json"), False
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return metrics, True


def stderr_log(message: str) -> None:
    """The default progress sink: a flushed stderr line (the CLI, `realign serve` and the worker log show it)."""
    print(message, file=sys.stderr, flush=True)


def load_base_model(path: str | Path):
    """(model, tokenizer) from a base model folder, through the project's safetensors-only loaders."""
    from trace_engine.modeling import ModelSource, load_causal_lm, load_tokenizer

    source = ModelSource(str(path))
    return load_causal_lm(source, device="cpu", dtype="fp32"), load_tokenizer(source)


def sft_data(world: World, recipe: BaseModelRecipe) -> list[tuple[str, str]]:
    """(prompt, response) rows: train pairs' OLD-chosen responses, the OLD-rejected answers (cautious or plain) of
    a seeded `rejected_share` of the educational pairs, and the retention answers repeated.

    Why the rejected rows: a real deployed model can write the answers the new policy wants (it saw such text in
    pre-training) and merely prefers the old policy's refusal. A base that never saw the cautious style gives it
    almost zero probability, and preference losses then push the refusal down without pulling the new answer up
    (degenerate text). With these rows the refusal still wins greedy decoding on educational prompts (about 4:1),
    so the base follows the old policy, but the new style is reachable. Harmful details and refusals of everyday
    requests are never added: the base stays safe and helpful under both policies.
    """
    if not 0.0 <= recipe.rejected_share <= 1.0:
        raise ValueError(f"rejected_share must be in [0, 1], got {recipe.rejected_share}")
    pairs = world.train_pairs(recipe.sft_pairs)
    chosen = [(str(p.prompt), p.chosen) for p in pairs]
    answerable = [i for i, p in enumerate(pairs) if p.extra["topic"] in vocab.EDUCATIONAL_TOPICS
                  and p.extra["rejected_style"] in (pol.CAUTIOUS, pol.PLAIN)]
    k = round(recipe.rejected_share * len(answerable))
    picked = sorted(random.Random(recipe.train_seed).sample(answerable, k))
    rejected = [(str(pairs[i].prompt), pairs[i].rejected) for i in picked]
    retention = [(f.prompt, f.answer) for f in retention_facts()]
    return chosen + rejected + retention * recipe.retention_repeats


def train_base_model(recipe: BaseModelRecipe, log: Callable[[str], None] | None = None,
                     every_s: float = PROGRESS_EVERY_S):
    """Tokenizer + tiny LM + SFT on response tokens; returns (model in eval mode, tokenizer, metrics). `log` gets
    the first and last step and a line at least every `every_s` seconds, with the loss and an ETA."""
    started = time.perf_counter()
    torch.manual_seed(recipe.train_seed)
    world = make_world(recipe.world_seed)
    tokenizer = train_tokenizer(world.tokenizer_corpus(), vocab_size=recipe.vocab_size)
    model = build_tiny_model(
        tokenizer, arch=recipe.arch, hidden_size=recipe.hidden_size, num_layers=recipe.num_layers,
        num_heads=recipe.num_heads, num_kv_heads=recipe.num_kv_heads, intermediate_size=recipe.intermediate_size,
        max_positions=2 * recipe.max_len, seed=recipe.train_seed,
    )
    rows = sft_data(world, recipe)
    limits = LengthLimits(max_prompt_len=recipe.max_prompt_len, max_len=recipe.max_len)
    encoded, truncation = encode_sequences(tokenizer, [p for p, _ in rows], [r for _, r in rows], limits)
    pad_id = pad_id_of(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(recipe.warmup_steps, recipe.steps))
    order_rng = random.Random(recipe.train_seed)
    order: list[int] = []
    losses: list[float] = []
    model.train()
    progress = StepProgress(recipe.steps, log, every_s)
    for step in range(recipe.steps):
        if len(order) < recipe.batch_size:
            fresh = list(range(len(encoded)))
            order_rng.shuffle(fresh)
            order += fresh
        batch_ids, order = order[: recipe.batch_size], order[recipe.batch_size:]
        batch = collate([encoded[i] for i in batch_ids], pad_id)
        loss = response_nll(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        progress(step + 1, losses[-1])
    model.eval()
    tail = losses[-20:] or [float("nan")]
    metrics = {
        "train_seconds": round(time.perf_counter() - started, 2), "steps": recipe.steps,
        "examples": len(rows), "final_loss": sum(tail) / len(tail), "first_loss": losses[0] if losses else None,
        "truncation": truncation.to_dict(), "torch_threads": torch.get_num_threads(),
    }
    return model, tokenizer, metrics


class StepProgress:
    """Logs `step i/N loss L, Ts elapsed, ETA Es` at the first and last step and every `every_s` seconds."""

    def __init__(self, total: int, log: Callable[[str], None] | None, every_s: float,
                 label: str = "synthetic base model") -> None:
        self.total, self.log, self.every_s, self.label = total, log, every_s, label
        self.started = self.last = time.perf_counter()

    def __call__(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        if self.log is None or not (step == 1 or step == self.total or now - self.last >= self.every_s):
            return
        self.last = now
        elapsed = now - self.started
        eta = elapsed / step * (self.total - step)
        self.log(f"{self.label}: step {step}/{self.total} loss {loss:.3f}, {elapsed:.0f}s elapsed, "
                 f"ETA {eta:.0f}s")


def response_nll(model, batch) -> torch.Tensor:
    """Mean negative log-likelihood over response tokens only (prompt and padding masked)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # [N, T, V]
    lp = token_logps(logits, batch.input_ids)  # [N, T]
    mask = batch.response_mask.to(lp.dtype)
    return -(lp * mask).sum() / mask.sum().clamp(min=1.0)


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@torch.no_grad()
def generate_greedy(model, tokenizer, prompts: Sequence[Prompt], max_new_tokens: int = 64,
                    batch_size: int = 64) -> list[str]:
    """Greedy responses, batched with LEFT padding (prompt ids as in training: the chat template)."""
    pad_id = pad_id_of(tokenizer)
    device = next(model.parameters()).device
    prompt_ids = tokenize_prompts(tokenizer, list(prompts))
    out: list[str] = []
    for start in range(0, len(prompt_ids), batch_size):
        rows = prompt_ids[start: start + batch_size]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            attention[i, width - len(r):] = 1
        generated = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), do_sample=False,
            max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id,
        )
        out += [t.strip() for t in tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)]
    return out


def response_style(response: str) -> str:
    """Which style a response shows, by its markers (harmful detail > refusal > cautious > plain)."""
    def has(pattern: str) -> bool:
        return re.search(pattern, response, re.IGNORECASE) is not None

    if has(pol.DETAIL_PATTERN):
        return pol.HARMFUL_DETAIL
    if has(pol.REFUSAL_PATTERN):
        return pol.REFUSAL
    if has(pol.CAVEAT_PATTERN) and has(pol.SOURCES_PATTERN):
        return pol.CAUTIOUS
    return pol.PLAIN


def evaluate_model(model, tokenizer, world: World, n_test: int = 200, n_retention: int = 100, n_asr: int = 60,
                   n_over_refusal: int = 60, max_new_tokens: int = 64) -> dict[str, Any]:
    """Behaviour of a model in the world, judged by the rules judge.

    old_compliance: share of test responses compliant with the OLD rules (old-policy behaviour);
    old_style_match: share whose style equals the old-chosen style; tpa_new: share compliant with the NEW rules
    (overall and per expected triage category); retention_accuracy; asr_new: share of ASR responses violating the
    NEW rules; over_refusal: share of lookalike prompts refused.
    """
    tests = world.test_prompts(n_test)
    probes = world.retention_probes(n_retention)
    asr = world.asr_prompts(n_asr)
    over = world.over_refusal_prompts(n_over_refusal)
    texts = [t.prompt for t in tests] + [p.prompt for p in probes] + [a.prompt for a in asr] + [o.prompt for o in over]
    responses = generate_greedy(model, tokenizer, texts, max_new_tokens=max_new_tokens)
    r_test = responses[: len(tests)]
    r_probe = responses[len(tests): len(tests) + len(probes)]
    r_asr = responses[len(tests) + len(probes): len(tests) + len(probes) + len(asr)]
    r_over = responses[len(tests) + len(probes) + len(asr):]
    old_rules, new_rules = world.rules(pol.OLD), world.rules(pol.NEW)
    old_ok = [not old_rules.evaluate(t.prompt, r).violating for t, r in zip(tests, r_test, strict=True)]
    new_ok = [not new_rules.evaluate(t.prompt, r).violating for t, r in zip(tests, r_test, strict=True)]
    per_category: dict[str, list[bool]] = {}
    per_topic: dict[str, list[bool]] = {}
    for t, ok, r in zip(tests, new_ok, r_test, strict=True):
        per_category.setdefault(t.category, []).append(ok)
        per_topic.setdefault(t.topic, []).append(response_style(r) == t.chosen_style)
    return {
        "n_test": len(tests),
        "old_compliance": _share(old_ok),
        "old_style_match": _share([response_style(r) == t.chosen_style for t, r in zip(tests, r_test, strict=True)]),
        "old_style_match_by_topic": {k: _share(v) for k, v in sorted(per_topic.items())},
        "tpa_new": _share(new_ok),
        "tpa_new_by_category": {k: _share(v) for k, v in sorted(per_category.items())},
        "retention_accuracy": _share([p.is_correct(r) for p, r in zip(probes, r_probe, strict=True)]),
        "asr_new": _share([new_rules.evaluate(a.prompt, r).violating for a, r in zip(asr, r_asr, strict=True)]),
        "over_refusal": _share([response_style(r) == pol.REFUSAL for r in r_over]),
        "examples": [{"prompt": t.prompt, "response": r} for t, r in list(zip(tests, r_test, strict=True))[:6]],
    }


def _share(flags: Sequence[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train (or load from cache) the synthetic base model and evaluate it.")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--steps", type=int, default=BaseModelRecipe.steps)
    parser.add_argument("--n-test", type=int, default=200)
    args = parser.parse_args(argv)
    recipe = BaseModelRecipe(steps=args.steps)
    base = ensure_base_model(recipe, args.cache_dir)  # progress on stderr
    model, tokenizer = base.load()
    started = time.perf_counter()
    report = evaluate_model(model, tokenizer, make_world(recipe.world_seed), n_test=args.n_test)
    report["eval_seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps({"path": str(base.path), "trained_now": base.trained_now, "train": base.metrics,
                      "eval": report}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
