"""Generation backends: the interface every evaluation suite talks to, and a local transformers backend.

`GenerationBackend` is deliberately small (greedy text generation and continuation log-likelihoods) so a vLLM
or HTTP backend can implement it later. `LocalBackend` shares the prompt contract of
`trace_engine.tokenization`
with training and scoring: the chat template with the generation prompt, tokenised without added special
tokens, so the BOS is never doubled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from trace_engine.data.pairs import Prompt
from trace_engine.logprobs import sequence_logps
from trace_engine.tokenization import EncodedSequence, collate, pad_id_of, tokenize_prompts

DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_BATCH_SIZE = 8

Progress = Callable[[int], None]  # called with how many more prompts are done (generated or judged)


class GenerationBackend(Protocol):
    """Greedy generation and scoring for one model (+ optional adapter)."""

    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        *,
        batch_size: int | None = None,
        progress: Progress | None = None,
    ) -> list[str]:
        """Greedy (do_sample=False) responses, one per prompt, in the prompts' order, stopping at EOS;
        `progress(n)` after each batch of n prompts finishes (optional: backends without it still work through
        `generate_with_progress`)."""
        ...

    def loglikelihood(self, prompt: Prompt, continuations: Sequence[str]) -> list[float]:
        """Sum of log p(continuation tokens | prompt rendered as a chat turn), one per continuation."""
        ...

    def describe(self) -> dict[str, Any]:
        """What is being evaluated (model, revision, adapter), for the report."""
        ...


class LocalBackend:
    """A transformers causal LM in eval mode; batched greedy generation with left padding."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        info: dict[str, Any] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.pad_id = pad_id_of(tokenizer)
        self.eos_ids = eos_token_ids(model, tokenizer)
        self._info = dict(info or {})

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        *,
        revision: str | None = None,
        adapter_dir: str | Path | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> LocalBackend:
        """Load a local dir or a pinned Hub id (safetensors, no remote code) and optionally a peft adapter."""
        from trace_engine.modeling import ModelSource, load_causal_lm, load_tokenizer

        source = ModelSource(model, revision)
        tokenizer = load_tokenizer(source)
        lm = load_causal_lm(source, device=device, dtype=dtype)
        if adapter_dir is not None:
            lm = _load_adapter(lm, Path(adapter_dir))
        info = {
            "model": model,
            "revision": revision,
            "adapter": str(adapter_dir) if adapter_dir else None,
            "dtype": str(next(lm.parameters()).dtype).removeprefix("torch."),
        }
        return cls(lm, tokenizer, batch_size=batch_size, info=info)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> dict[str, Any]:
        return {"backend": "local-transformers", **self._info}

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        *,
        batch_size: int | None = None,
        progress: Progress | None = None,
    ) -> list[str]:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not prompts:
            return []
        size = batch_size or self.batch_size
        prompt_ids = tokenize_prompts(self.tokenizer, prompts)
        # Longest first: similar lengths share a batch (little padding); an OOM shows up on the first batch.
        order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
        out: list[str | None] = [None] * len(prompt_ids)
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            texts = self._generate_batch([prompt_ids[i] for i in batch], max_new_tokens)
            for i, text in zip(batch, texts, strict=True):
                out[i] = text
            if progress is not None:
                progress(len(batch))
        return [t if t is not None else "" for t in out]

    def _generate_batch(self, rows: list[list[int]], max_new_tokens: int) -> list[str]:
        from transformers import GenerationConfig

        input_ids, attention_mask = left_pad(rows, self.pad_id)
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=list(self.eos_ids),
            pad_token_id=self.pad_id,
        )
        generated = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            generation_config=config,
        )
        new_tokens = generated[:, input_ids.shape[1] :].tolist()
        return [
            self.tokenizer.decode(cut_at_stop(row, self.eos_ids), skip_special_tokens=True)
            for row in new_tokens
        ]

    @torch.no_grad()
    def loglikelihood(self, prompt: Prompt, continuations: Sequence[str]) -> list[float]:
        if not continuations:
            return []
        if any(not c for c in continuations):
            raise ValueError("every continuation must be non-empty text")
        (prompt_ids,) = tokenize_prompts(self.tokenizer, [prompt])
        cont_ids = self.tokenizer(list(continuations), add_special_tokens=False)["input_ids"]
        rows = [EncodedSequence(tuple(prompt_ids), tuple(c)) for c in cont_ids]
        scores: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            batch = collate(rows[start : start + self.batch_size], self.pad_id).to(self.device)
            logits = self.model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask
            ).logits  # [N, T, V]
            scores.extend(sequence_logps(logits, batch.input_ids, batch.response_mask).tolist())
        return scores


def generate_with_progress(backend: GenerationBackend, prompts: Sequence[Prompt], max_new_tokens: int,
                           progress: Progress | None = None) -> list[str]:
    """`backend.generate`, passing `progress` only when there is one (test doubles need not accept it)."""
    if progress is None:
        return backend.generate(prompts, max_new_tokens)
    return backend.generate(prompts, max_new_tokens, progress=progress)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, T] ids padded on the left (decoder-only generation continues from the last column) and the mask."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


def cut_at_stop(tokens: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """Tokens before the first stop token (rows that finished early are padded after their EOS)."""
    stops = set(stop_ids)
    for i, t in enumerate(tokens):
        if t in stops:
            return list(tokens[:i])
    return list(tokens)


def eos_token_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    """The tokenizer's EOS plus any the model's generation config names (e.g. Llama 3's <|eot_id|>)."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        configured = [configured]
    for t in configured or []:
        if int(t) not in ids:
            ids.append(int(t))
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config names an EOS token")
    return tuple(ids)


def _load_adapter(model: Any, adapter_dir: Path) -> Any:
    """Attach a trained peft adapter (safetensors only) for inference."""
    from peft import PeftModel

    if not adapter_dir.is_dir():
        raise ValueError(f"adapter dir {adapter_dir} is not a directory")
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise ValueError(f"{adapter_dir} has no adapter_model.safetensors (pickle adapters are refused)")
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False).eval()
