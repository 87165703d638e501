"""Turn (prompt, response) text into token rows for training and scoring.

Contract (every stage that scores or trains uses it, so the numbers agree):

- prompt ids = the tokenizer's chat template applied to the prompt with `add_generation_prompt=True` (a string prompt
  is one user message). Tokenizers without a chat template use `PLAIN_TEMPLATE` ("User: ...\\nAssistant: "), with
  the tokenizer's BOS in front when its `__call__` normally adds one (a base model saw BOS at training time).
- response ids = the response text tokenised with no special tokens, then EOS.
- BOS is never doubled: template text that already starts with the BOS string is tokenised without special tokens.
- truncation keeps the END of the prompt (the question the response answers) and the START of the response.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from trace_engine.config import LengthLimits
from trace_engine.data.pairs import Prompt, prompt_key
from trace_engine.logprobs import SequenceBatch

PLAIN_TEMPLATE = "User: {prompt}\nAssistant: "
"""Used when the tokenizer has no chat template. Chat prompts become 'Role: content' lines."""


@dataclass(frozen=True)
class EncodedSequence:
    """One row: prompt tokens then response tokens (no padding)."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    prompt_truncated: bool = False
    response_truncated: bool = False

    @property
    def input_ids(self) -> tuple[int, ...]:
        return self.prompt_ids + self.response_ids

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclass(frozen=True)
class EncodedPair:
    """The same prompt with the preferred and the dispreferred response."""

    preferred: EncodedSequence
    dispreferred: EncodedSequence


@dataclass
class TruncationReport:
    """How many rows lost tokens to the length limits (reported, never silent)."""

    sequences: int = 0
    prompts_truncated: int = 0
    responses_truncated: int = 0

    def add(self, seq: EncodedSequence) -> None:
        self.sequences += 1
        self.prompts_truncated += int(seq.prompt_truncated)
        self.responses_truncated += int(seq.response_truncated)

    def merge(self, other: TruncationReport) -> TruncationReport:
        return TruncationReport(
            self.sequences + other.sequences,
            self.prompts_truncated + other.prompts_truncated,
            self.responses_truncated + other.responses_truncated,
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "sequences": self.sequences,
            "prompts_truncated": self.prompts_truncated,
            "responses_truncated": self.responses_truncated,
        }


@dataclass
class _TokenizerTraits:
    bos_id: int | None
    bos_text: str | None
    eos_id: int
    adds_bos: bool
    has_template: bool


def _traits(tokenizer) -> _TokenizerTraits:
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("tokenizer has no eos_token: responses must end with EOS so the model learns to stop")
    bos_id = tokenizer.bos_token_id
    probe = tokenizer("a")["input_ids"]
    adds_bos = bos_id is not None and len(probe) > 0 and probe[0] == bos_id
    return _TokenizerTraits(
        bos_id=bos_id,
        bos_text=tokenizer.bos_token if bos_id is not None else None,
        eos_id=eos_id,
        adds_bos=adds_bos,
        has_template=bool(getattr(tokenizer, "chat_template", None)),
    )


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """A string prompt is one user message; a chat prompt is used as is."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return list(prompt)


def render_prompts(tokenizer, prompts: Sequence[Prompt]) -> list[str]:
    """Prompt text exactly as the model sees it before the response (template with the generation prompt)."""
    if getattr(tokenizer, "chat_template", None):
        return [
            tokenizer.apply_chat_template(as_messages(p), add_generation_prompt=True, tokenize=False) for p in prompts
        ]
    return [PLAIN_TEMPLATE.format(prompt=_plain_text(p)) for p in prompts]


def _plain_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', 'user').capitalize()}: {m.get('content', '')}" for m in prompt)


def tokenize_prompts(tokenizer, prompts: Sequence[Prompt]) -> list[list[int]]:
    """Prompt ids for many prompts in one tokenizer call (the fast path); never a doubled BOS."""
    traits = _traits(tokenizer)
    texts = render_prompts(tokenizer, prompts)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    out: list[list[int]] = []
    for text, row in zip(texts, ids, strict=True):
        row = list(row)
        # A chat template owns its special tokens (apply_chat_template(tokenize=True) adds none); the plain template
        # gets the BOS the tokenizer would add, unless the text already starts with it.
        if not traits.has_template and traits.adds_bos and not (traits.bos_text and text.startswith(traits.bos_text)):
            row = [traits.bos_id, *row]
        if not row:
            raise ValueError("a prompt rendered to zero tokens: the first response token would have no context")
        out.append(row)
    return out


def tokenize_responses(tokenizer, responses: Sequence[str]) -> list[list[int]]:
    """Response ids (no special tokens) + EOS, many responses in one tokenizer call."""
    eos = _traits(tokenizer).eos_id
    if not responses:
        return []
    ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    return [[*row, eos] for row in ids]


def truncate(prompt_ids: Sequence[int], response_ids: Sequence[int], limits: LengthLimits) -> EncodedSequence:
    """Keep the last max_prompt_len prompt tokens, then the first (max_len - prompt) response tokens."""
    p = tuple(prompt_ids)
    prompt_truncated = len(p) > limits.max_prompt_len
    if prompt_truncated:
        p = p[-limits.max_prompt_len :]
    room = limits.max_len - len(p)
    r = tuple(response_ids)
    response_truncated = len(r) > room
    if response_truncated:
        r = r[:room]
    return EncodedSequence(p, r, prompt_truncated, response_truncated)


def encode_sequences(
    tokenizer,
    prompts: Sequence[Prompt],
    responses: Sequence[str],
    limits: LengthLimits | None = None,
) -> tuple[list[EncodedSequence], TruncationReport]:
    """Encode (prompt_i, response_i) rows; each distinct prompt is tokenised once."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    limits = limits or LengthLimits()
    prompt_ids = _unique_prompt_ids(tokenizer, prompts)
    response_ids = tokenize_responses(tokenizer, responses)
    report = TruncationReport()
    out = []
    for p, r in zip(prompt_ids, response_ids, strict=True):
        seq = truncate(p, r, limits)
        report.add(seq)
        out.append(seq)
    return out, report


def encode_pairs(
    tokenizer,
    prompts: Sequence[Prompt],
    preferred: Sequence[str],
    dispreferred: Sequence[str],
    limits: LengthLimits | None = None,
) -> tuple[list[EncodedPair], TruncationReport]:
    """(preferred, dispreferred) encodings sharing the prompt ids; tokenises all texts in three tokenizer calls."""
    if not (len(prompts) == len(preferred) == len(dispreferred)):
        raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(preferred)} / {len(dispreferred)} responses")
    limits = limits or LengthLimits()
    prompt_ids = _unique_prompt_ids(tokenizer, prompts)
    both = tokenize_responses(tokenizer, [*preferred, *dispreferred])
    n = len(prompts)
    report = TruncationReport()
    out = []
    for i, p in enumerate(prompt_ids):
        pos, neg = truncate(p, both[i], limits), truncate(p, both[n + i], limits)
        report.add(pos)
        report.add(neg)
        out.append(EncodedPair(pos, neg))
    return out, report


def encode_pair(
    tokenizer, prompt: Prompt, preferred: str, dispreferred: str, limits: LengthLimits | None = None
) -> EncodedPair:
    """One pair (convenience over `encode_pairs`)."""
    pairs, _ = encode_pairs(tokenizer, [prompt], [preferred], [dispreferred], limits)
    return pairs[0]


def _unique_prompt_ids(tokenizer, prompts: Sequence[Prompt]) -> list[list[int]]:
    keys = [prompt_key(p) for p in prompts]
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    unique = list(first)
    ids = tokenize_prompts(tokenizer, [prompts[first[k]] for k in unique])
    by_key = dict(zip(unique, ids, strict=True))
    return [by_key[k] for k in keys]


def collate(
    encoded: Sequence[EncodedSequence], pad_id: int, pad_to_multiple_of: int | None = None
) -> SequenceBatch:
    """Right-pad rows to the longest in this batch (optionally rounded up to a multiple, e.g. 8 for tensor cores).

    response_mask is True exactly on response-token positions.
    """
    if not encoded:
        raise ValueError("collate needs at least one row")
    width = max(len(e) for e in encoded)
    if pad_to_multiple_of and pad_to_multiple_of > 1:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    n = len(encoded)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    response_mask = torch.zeros((n, width), dtype=torch.bool)
    for i, e in enumerate(encoded):
        p, total = len(e.prompt_ids), len(e)
        input_ids[i, :total] = torch.tensor(e.input_ids, dtype=torch.long)
        attention_mask[i, :total] = 1
        response_mask[i, p:total] = True
    return SequenceBatch(input_ids, attention_mask, response_mask)


def pad_id_of(tokenizer) -> int:
    """The pad id to use for collate: the tokenizer's pad token, else EOS (masked out anyway)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has neither a pad nor an eos token")
    return int(tokenizer.eos_token_id)
