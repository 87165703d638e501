"""General capability: multiple choice (MMLU, HellaSwag, GPQA styles) and grade-school math (GSM8K).

Scoring is exact, never an LLM judge:
- multiple choice by log-likelihood: each option is scored as the assistant's reply to the question (sum of
  token log-probs, `acc`) and, to remove the bias toward short options, divided by the option's UTF-8
  byte length
  (`acc_norm`, the tokenizer-independent normalisation);
- or multiple choice by generation: the options are shown with letters and the letter is extracted exactly;
- GSM8K by numeric match of the last number in the response (or the number after `####`).

Option order is shuffled per question with a seed derived from (seed, question id), so the gold letter varies
across questions (the published GPQA code re-seeded per row and put every answer at the same letter).

Datasets come from local JSON/JSONL/Parquet files or from the Hub as `hf://REPO@REVISION:[CONFIG/]SPLIT`; an
unpinned Hub reference is refused.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from trace_engine.data.hub import is_hub_ref, load_hub_dataset, parse_hub_ref, revision_notes
from trace_engine.data.io import DatasetError, iter_raw_rows
from trace_engine.data.pairs import sha256_text
from trace_engine.evaluation.generation import GenerationBackend
from trace_engine.evaluation.report import SuiteResult
from trace_engine.evaluation.stats import DEFAULT_RESAMPLES, rate

SUITE = "capability"
LETTERS = "ABCDEFGHIJ"
MCMode = Literal["loglik", "letter"]
DEFAULT_LETTER_TOKENS = 16
DEFAULT_GSM8K_TOKENS = 384


@dataclass(frozen=True)
class MCQuestion:
    """A multiple-choice item; `answer` indexes `choices`."""

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int

    def __post_init__(self) -> None:
        if not 2 <= len(self.choices) <= len(LETTERS):
            raise ValueError(f"question {self.id}: needs 2..{len(LETTERS)} choices, has {len(self.choices)}")
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(f"question {self.id}: answer index {self.answer} out of range")

    @property
    def gold_letter(self) -> str:
        return LETTERS[self.answer]


@dataclass(frozen=True)
class NumericQuestion:
    """A GSM8K-style item; `answer` is the gold final number as text."""

    id: str
    question: str
    answer: str


@dataclass
class CapabilitySet:
    """One benchmark: `kind` 'mc' or 'numeric'; `source` records where the items came from."""

    name: str
    kind: Literal["mc", "numeric"]
    items: list[Any]
    source: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- shuffling


def question_seed(seed: int, question_id: str) -> int:
    """Per-question seed: a hash of (seed, id), stable across runs, machines and Python hash randomisation."""
    return int(sha256_text("mc-shuffle", str(seed), question_id)[:16], 16)


def shuffle_choices(q: MCQuestion, seed: int) -> MCQuestion:
    order = list(range(len(q.choices)))
    random.Random(question_seed(seed, q.id)).shuffle(order)
    return replace(q, choices=tuple(q.choices[i] for i in order), answer=order.index(q.answer))


# ---------------------------------------------------------------- extraction


_ANSWER_LETTER = re.compile(r"(?i:answer)\s*(?:(?i:is)\s*)?[:\-]?\s*\(?\s*([A-J])\s*\)?(?![A-Za-z])")
_LEADING_LETTER = re.compile(r"^\(?([A-J])(?:\)|[.:]|\s*$)")
_PAREN_LETTER = re.compile(r"\(([A-J])\)")


def extract_letter(response: str, n_choices: int) -> str | None:
    """The chosen option letter, or None when the response does not clearly name one of the first n letters.

    In order: the last "answer is X" / "Answer: (X)"; a reply that starts with "X." / "(X)" / "X)" / "X:" or
    is
    just "X"; a single distinct "(X)" anywhere. A leading article ("A good question...") is not a letter.
    """
    valid = LETTERS[:n_choices]
    text = response.strip()
    stated = [m for m in _ANSWER_LETTER.findall(text) if m in valid]
    if stated:
        return stated[-1]
    m = _LEADING_LETTER.match(text)
    if m and m.group(1) in valid:
        return m.group(1)
    marked = {m for m in _PAREN_LETTER.findall(text) if m in valid}
    if len(marked) == 1:
        return marked.pop()
    return None


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def extract_number(text: str) -> str | None:
    """The final numeric answer, canonicalised ('1,234.50' -> '1234.5'), or None.

    The number after the last '####' when present (GSM8K's gold format, which we also ask the model to use);
    otherwise the last number in the text. '$' signs and thousands separators are stripped.
    """
    marked = "####" in text
    if marked:
        text = text.rsplit("####", 1)[1]
    cleaned = _THOUSANDS.sub("", text.replace("$", ""))
    numbers = _NUMBER.findall(cleaned)
    if not numbers:
        return None
    return canonical_number(numbers[0] if marked else numbers[-1])


def canonical_number(text: str) -> str | None:
    """Decimal text without trailing zeros or a '-0' (so 3.50 == 3.5 and 7.0 == 7)."""
    try:
        value = Decimal(text.replace(",", "").replace("$", "").strip())
    except InvalidOperation:
        return None
    if value == 0:
        return "0"
    normal = value.normalize()
    return format(normal, "f")


# ---------------------------------------------------------------- prompts


def letter_prompt(q: MCQuestion) -> str:
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(q.choices))
    return (
        f"{q.question}\n\n{options}\n\n"
        f"Answer with the letter of the correct option ({', '.join(LETTERS[: len(q.choices)])}) only."
    )


def gsm8k_prompt(q: NumericQuestion) -> str:
    return (
        f"{q.question}\n\nSolve the problem step by step, then give the final answer on its own line as "
        "'#### <number>'."
    )


# ---------------------------------------------------------------- scoring


def pick_by_loglik(scores: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """(argmax of summed log-prob, argmax of log-prob per UTF-8 byte); ties go to the first option."""
    if len(scores) != len(choices):
        raise ValueError(f"{len(scores)} scores for {len(choices)} choices")
    raw = max(range(len(scores)), key=lambda i: (scores[i], -i))
    normed = [s / max(1, len(c.encode("utf-8"))) for s, c in zip(scores, choices, strict=True)]
    norm = max(range(len(normed)), key=lambda i: (normed[i], -i))
    return raw, norm


def score_mc_loglik(
    backend: GenerationBackend, dataset: CapabilitySet, *, seed: int = 0, resamples: int = DEFAULT_RESAMPLES
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    correct, correct_norm, records = [], [], []
    for original in dataset.items:
        q = shuffle_choices(original, seed)
        scores = backend.loglikelihood(q.question, list(q.choices))
        raw, norm = pick_by_loglik(scores, q.choices)
        correct.append(raw == q.answer)
        correct_norm.append(norm == q.answer)
        records.append(
            {
                "suite": SUITE,
                "set": dataset.name,
                "id": q.id,
                "mode": "loglik",
                "gold": q.gold_letter,
                "pred": LETTERS[raw],
                "pred_norm": LETTERS[norm],
                "scores": scores,
            }
        )
    metrics = {
        f"{dataset.name}/acc": rate(correct, seed=seed, resamples=resamples),
        f"{dataset.name}/acc_norm": rate(correct_norm, seed=seed, resamples=resamples),
    }
    return metrics, records


def score_mc_letter(
    backend: GenerationBackend,
    dataset: CapabilitySet,
    *,
    seed: int = 0,
    max_new_tokens: int = DEFAULT_LETTER_TOKENS,
    resamples: int = DEFAULT_RESAMPLES,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    questions = [shuffle_choices(q, seed) for q in dataset.items]
    responses = backend.generate([letter_prompt(q) for q in questions], max_new_tokens)
    preds = [extract_letter(r, len(q.choices)) for q, r in zip(questions, responses, strict=True)]
    correct = [p == q.gold_letter for p, q in zip(preds, questions, strict=True)]  # no letter counts as wrong
    records = [
        {
            "suite": SUITE,
            "set": dataset.name,
            "id": q.id,
            "mode": "letter",
            "gold": q.gold_letter,
            "pred": p,
            "response": r,
        }
        for q, p, r in zip(questions, preds, responses, strict=True)
    ]
    metrics = {f"{dataset.name}/acc_letter": rate(correct, seed=seed, resamples=resamples)}
    return metrics, records


def score_numeric(
    backend: GenerationBackend,
    dataset: CapabilitySet,
    *,
    seed: int = 0,
    max_new_tokens: int = DEFAULT_GSM8K_TOKENS,
    resamples: int = DEFAULT_RESAMPLES,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    questions: list[NumericQuestion] = list(dataset.items)
    responses = backend.generate([gsm8k_prompt(q) for q in questions], max_new_tokens)
    preds = [extract_number(r) for r in responses]
    correct = [
        p is not None and p == canonical_number(q.answer) for p, q in zip(preds, questions, strict=True)
    ]
    records = [
        {
            "suite": SUITE,
            "set": dataset.name,
            "id": q.id,
            "mode": "numeric",
            "gold": q.answer,
            "pred": p,
            "response": r,
        }
        for q, p, r in zip(questions, preds, responses, strict=True)
    ]
    return {f"{dataset.name}/acc": rate(correct, seed=seed, resamples=resamples)}, records


def run_capability(
    backend: GenerationBackend,
    datasets: Sequence[CapabilitySet],
    *,
    mc_mode: MCMode = "loglik",
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
    letter_tokens: int = DEFAULT_LETTER_TOKENS,
    numeric_tokens: int = DEFAULT_GSM8K_TOKENS,
) -> SuiteResult:
    if mc_mode not in ("loglik", "letter"):
        raise ValueError(f"unknown multiple-choice mode {mc_mode!r}: use 'loglik' or 'letter'")
    result = SuiteResult(SUITE, info={"mc_mode": mc_mode, "shuffle_seed": seed, "sources": {}})
    for ds in datasets:
        if not ds.items:
            raise ValueError(f"capability set {ds.name!r} is empty")
        if ds.kind == "numeric":
            metrics, records = score_numeric(
                backend, ds, seed=seed, max_new_tokens=numeric_tokens, resamples=resamples
            )
        elif mc_mode == "loglik":
            metrics, records = score_mc_loglik(backend, ds, seed=seed, resamples=resamples)
        else:
            metrics, records = score_mc_letter(
                backend, ds, seed=seed, max_new_tokens=letter_tokens, resamples=resamples
            )
        result.metrics.update(metrics)
        result.records.extend(records)
        result.info["sources"][ds.name] = ds.source
        result.notes.extend(f"{ds.name}: {n}" for n in ds.source.get("notes", []))
    return result


# ---------------------------------------------------------------- loading


def _answer_index(value: Any, n: int, where: str) -> int:
    if isinstance(value, bool):
        raise DatasetError(f"{where}: answer must be an index or a letter, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        v = value.strip()
        if v.isdigit():
            return int(v)
        if len(v) == 1 and v.upper() in LETTERS[:n]:
            return LETTERS.index(v.upper())
    raise DatasetError(f"{where}: answer must be an index or a letter, got {value!r}")


def _mmlu_row(row: dict[str, Any], item_id: str, where: str) -> MCQuestion:
    """MMLU: question, choices (list), answer (index or letter). Also the generic multiple-choice format."""
    choices = row.get("choices")
    if not isinstance(row.get("question"), str) or not isinstance(choices, list):
        raise DatasetError(f"{where}: expected 'question' (text) and 'choices' (list)")
    return MCQuestion(
        item_id,
        row["question"],
        tuple(str(c) for c in choices),
        _answer_index(row.get("answer"), len(choices), where),
    )


def _hellaswag_row(row: dict[str, Any], item_id: str, where: str) -> MCQuestion:
    """HellaSwag: ctx (or ctx_a + ctx_b), endings (list), label (index, often as a string)."""
    ctx = row.get("ctx") or " ".join(str(row.get(k, "")) for k in ("ctx_a", "ctx_b")).strip()
    endings = row.get("endings")
    if not ctx or not isinstance(endings, list):
        raise DatasetError(f"{where}: expected 'ctx' and 'endings' (list)")
    return MCQuestion(
        item_id, ctx, tuple(str(e) for e in endings), _answer_index(row.get("label"), len(endings), where)
    )


def _gpqa_row(row: dict[str, Any], item_id: str, where: str) -> MCQuestion:
    """GPQA: 'Question', 'Correct Answer', 'Incorrect Answer 1..3'. The correct one is stored first; the
    per-question
    shuffle moves it."""
    keys = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
    missing = [k for k in keys if not isinstance(row.get(k), str)]
    if missing:
        raise DatasetError(f"{where}: missing GPQA fields {missing}")
    return MCQuestion(item_id, row["Question"].strip(), tuple(row[k].strip() for k in keys[1:]), 0)


def _gsm8k_row(row: dict[str, Any], item_id: str, where: str) -> NumericQuestion:
    """GSM8K: question, answer (worked solution ending '#### N', or just N)."""
    answer = row.get("answer")
    if not isinstance(row.get("question"), str) or answer is None:
        raise DatasetError(f"{where}: expected 'question' and 'answer'")
    gold = extract_number(str(answer))
    if gold is None:
        raise DatasetError(f"{where}: no number in the answer {str(answer)[-60:]!r}")
    return NumericQuestion(item_id, row["question"], gold)


ROW_FORMATS: dict[
    str, tuple[Literal["mc", "numeric"], Callable[[dict[str, Any], str, str], Any], tuple[str, ...]]
] = {
    "mmlu": ("mc", _mmlu_row, ("id",)),
    "mc": ("mc", _mmlu_row, ("id",)),
    "hellaswag": ("mc", _hellaswag_row, ("id", "ind")),
    "gpqa": ("mc", _gpqa_row, ("id", "Record ID")),
    "gsm8k": ("numeric", _gsm8k_row, ("id",)),
}


def load_capability_set(
    fmt: str,
    source: str | Path,
    *,
    name: str | None = None,
    limit: int | None = None,
    cache_dir: str | None = None,
    loader: Callable[..., Any] | None = None,
) -> CapabilitySet:
    """Items of one benchmark from a local file or a pinned `hf://` reference; malformed rows are an error."""
    if fmt not in ROW_FORMATS:
        raise ValueError(f"unknown capability format {fmt!r}; known: {', '.join(ROW_FORMATS)}")
    kind, parse_row, id_keys = ROW_FORMATS[fmt]
    info: dict[str, Any] = {"format": fmt}
    if is_hub_ref(source):
        ref = parse_hub_ref(str(source))
        info.update(source=str(ref), repo=ref.repo, revision=ref.revision, split=ref.split, config=ref.config)
        if ref.revision is None:
            raise DatasetError(
                f"{source}: no revision; benchmarks must be pinned (hf://{ref.repo}@<commit sha>:"
                f"{ref.split}) so scores stay comparable between runs"
            )
        info["notes"] = revision_notes(ref, allow_unpinned=False)
        rows = (
            (i, dict(r)) for i, r in enumerate(load_hub_dataset(ref, cache_dir=cache_dir, loader=loader), 1)
        )
    else:
        info.update(source=str(source), notes=[])
        rows = (_checked(raw, source) for raw in iter_raw_rows(source))
    items: list[Any] = []
    seen: set[str] = set()
    for number, row in rows:
        where = f"{source}: row {number}"
        item_id = next((str(row[k]) for k in id_keys if row.get(k) is not None), str(number))
        if item_id in seen:
            raise DatasetError(f"{where}: duplicate id {item_id!r}")
        seen.add(item_id)
        try:
            items.append(parse_row(row, item_id, where))
        except ValueError as exc:  # MCQuestion validation
            raise DatasetError(f"{where}: {exc}") from exc
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise DatasetError(f"{source}: no items")
    return CapabilitySet(name or fmt, kind, items, info)


def _checked(raw: Any, source: str | Path) -> tuple[int, dict[str, Any]]:
    if raw.error is not None or not isinstance(raw.data, dict):
        raise DatasetError(f"{source}: row {raw.row}: {raw.error or 'expected a JSON object'}")
    return raw.row, raw.data
