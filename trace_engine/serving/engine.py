"""One base model with several LoRA adapters (peft), batched generation with per-row stop rules and streaming.

Adapters are loaded with peft `load_adapter` onto one `PeftModel`; a batch is one adapter (or the base, with
adapters disabled), chosen with `set_adapter` right before `generate`. The engine is not thread-safe: the server
runs every method on the micro-batcher's single generation thread.

Prompts are encoded with `trace_engine.tokenization.tokenize_prompts` (chat) so the chat formatting matches
training and scoring exactly. Weights are safetensors only; `trust_remote_code` is never set.

Rows that ask for `prompt_logprobs` (vLLM's extension, used for teacher-forced scoring by the deploy gate) get one
extra forward pass over their prompt, right-padded, with the same adapter selection as their generation, through
`trace_engine.logprobs.token_logps` (the function training and scoring use).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from trace_engine.evaluation.generation import eos_token_ids, left_pad
from trace_engine.logprobs import token_logps
from trace_engine.serving.protocol import (
    GenerationRequest,
    PromptLogprobs,
    SamplingParams,
    ServingError,
    bad_request,
)
from trace_engine.tokenization import pad_id_of, tokenize_prompts

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class RowJob:
    """One prompt to continue; the engine fills in the result fields. `on_delta` (if set) receives text pieces
    as they are decided, from the generation thread."""

    prompt_ids: list[int]
    params: SamplingParams
    on_delta: Callable[[str], None] | None = None
    cancelled: bool = False
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    prompt_logprobs: PromptLogprobs | None = None  # filled when params.prompt_logprobs is set
    _emitted: int = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """The client went away: stop spending compute on this row at the next step."""
        self.cancelled = True


@dataclass(frozen=True)
class LoadedAdapter:
    name: str
    path: str
    rank: int


class _RowMonitor(StoppingCriteria):
    """Per-row EOS, stop sequences and max_tokens, checked after every generated token (rows of one batch may
    ask for different lengths and stops); emits streaming deltas that never contain (part of) a stop sequence."""

    def __init__(self, rows: Sequence[RowJob], tokenizer: Any, eos_ids: Sequence[int]) -> None:
        self.rows, self.tokenizer, self.eos_ids = rows, tokenizer, frozenset(eos_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        for row, token in zip(self.rows, input_ids[:, -1].tolist(), strict=True):
            if not row.done:
                self._feed(row, int(token))
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)

    def _feed(self, row: RowJob, token: int) -> None:
        if row.cancelled:
            row.finish_reason = "cancelled"
            return
        row.completion_tokens += 1
        if token in self.eos_ids:
            row.finish_reason = "stop"
        else:
            row.tokens.append(token)
            row.text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
            cut = _first_stop(row.text, row.params.stop, max(0, row._emitted - _longest(row.params.stop)))
            if cut is not None:
                row.text, row.finish_reason = row.text[:cut], "stop"
            elif row.completion_tokens >= row.params.max_tokens:
                row.finish_reason = "length"
        _emit(row)


def _longest(stops: Sequence[str]) -> int:
    return max((len(s) for s in stops), default=0)


def _first_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _emit(row: RowJob) -> None:
    """Send the text that can no longer change: hold back a possible stop-sequence prefix and a split character."""
    if row.on_delta is None:
        return
    if row.done:
        safe = len(row.text)
    else:
        safe = len(row.text) - max(0, _longest(row.params.stop) - 1)
        # A character split across tokens decodes as U+FFFD until its last byte arrives: wait for it.
        safe = min(safe, len(row.text.rstrip("\ufffd")))
    if safe > row._emitted:
        row.on_delta(row.text[row._emitted : safe])
        row._emitted = safe


def check_adapter_dir(path: Path) -> dict[str, Any]:
    """The adapter's config, after refusing anything but a safetensors LoRA directory."""
    if not path.is_dir():
        raise ServingError(404, f"No adapter found at {str(path)!r}: not a directory", type="NotFoundError",
                           code="adapter_not_found", param="lora_path")
    if not (path / ADAPTER_WEIGHTS).is_file():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        why = f"it has only pickle weights ({', '.join(pickles)}), which are refused" if pickles else "it is missing"
        raise bad_request(f"adapter {str(path)!r} needs {ADAPTER_WEIGHTS}: {why}", "lora_path")
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise bad_request(f"adapter {str(path)!r} has no readable {ADAPTER_CONFIG}: {exc}", "lora_path") from exc
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        raise bad_request(f"adapter {str(path)!r} is not a LoRA adapter (peft_type must be LORA)", "lora_path")
    return config


class AdapterEngine:
    """A causal LM in eval mode plus named LoRA adapters; `generate_batch` serves one adapter (or the base)."""

    def __init__(self, model: Any, tokenizer: Any, *, model_name: str, max_loras: int = 8,
                 max_lora_rank: int = 64, max_model_len: int | None = None) -> None:
        if max_loras < 1:
            raise ValueError(f"max_loras must be >= 1, got {max_loras}")
        self.base = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        configured = getattr(model.config, "max_position_embeddings", None) or 2048
        self.max_model_len = int(max_model_len or configured)
        self.pad_id = pad_id_of(tokenizer)
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.adapters: dict[str, LoadedAdapter] = {}
        self._peft: Any = None  # the PeftModel wrapping self.base once the first adapter is loaded

    @classmethod
    def from_pretrained(cls, model: str, *, revision: str | None = None, served_model_name: str | None = None,
                        device: str | None = None, dtype: str | None = None, **kwargs: Any) -> AdapterEngine:
        from trace_engine.modeling import ModelSource, load_causal_lm, load_tokenizer

        source = ModelSource(model, revision)
        tokenizer = load_tokenizer(source)
        lm = load_causal_lm(source, device=device, dtype=dtype)
        return cls(lm, tokenizer, model_name=served_model_name or model, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    def has_model(self, name: str) -> bool:
        return name == self.model_name or name in self.adapters

    # ------------------------------------------------------------ adapters

    def load_adapter(self, name: str, path: str) -> LoadedAdapter:
        if not name:
            raise bad_request("`lora_name` must be a non-empty string", "lora_name")
        if name == self.model_name:
            raise bad_request(f"`lora_name` {name!r} is the base model's name", "lora_name")
        if name in self.adapters:
            raise bad_request(f"The lora adapter '{name}' has already been loaded.", "lora_name",
                              "adapter_already_loaded")
        if len(self.adapters) >= self.max_loras:
            raise bad_request(f"{len(self.adapters)} adapters are loaded, the limit (--max-loras); unload one first",
                              "lora_name", "too_many_adapters")
        config = check_adapter_dir(Path(path))
        rank = int(config.get("r", 0))
        if rank > self.max_lora_rank:
            raise bad_request(f"adapter rank {rank} is above --max-lora-rank {self.max_lora_rank}", "lora_path")
        try:
            self._attach(name, path)
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise bad_request(f"cannot load adapter {name!r} from {path!r}: {exc}", "lora_path",
                              "adapter_load_failed") from exc
        loaded = LoadedAdapter(name, str(path), rank)
        self.adapters[name] = loaded
        return loaded

    def _attach(self, name: str, path: str) -> None:
        from peft import PeftModel

        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self.base, path, adapter_name=name, is_trainable=False)
            self._peft.eval()
        else:
            self._peft.load_adapter(path, adapter_name=name, is_trainable=False)

    def unload_adapter(self, name: str) -> None:
        if name not in self.adapters:
            raise ServingError(404, f"The lora adapter '{name}' cannot be found.", type="NotFoundError",
                               code="adapter_not_found", param="lora_name")
        del self.adapters[name]
        if self.adapters:
            self._peft.delete_adapter(name)
        else:  # peft cannot run with zero adapters: take the LoRA layers out and serve the plain base again
            self.base = self._peft.unload().eval()
            self._peft = None

    # ------------------------------------------------------------ generation

    def encode(self, request: GenerationRequest) -> list[list[int]]:
        """Token ids per prompt: chat through the training chat template, completions as raw text (+BOS) or as
        the token ids sent."""
        if request.token_prompts:
            vocab = len(self.tokenizer)
            for row in request.token_prompts:
                if max(row) >= vocab:
                    raise bad_request(f"token id {max(row)} is out of vocabulary (size {vocab})", "prompt")
            return [list(r) for r in request.token_prompts]
        if request.kind == "chat":
            rows = tokenize_prompts(self.tokenizer, list(request.prompts))
        else:
            rows = [list(r) for r in self.tokenizer(list(request.prompts))["input_ids"]]
        for row in rows:
            if not row:
                raise bad_request("the prompt encodes to zero tokens", "prompt")
        return rows

    def fit_rows(self, request: GenerationRequest, *, default_max_tokens: int | None = None) -> list[RowJob]:
        """One job per prompt with its completion budget. A request without `max_tokens` gets what fits after
        its prompt (`max_model_len - prompt tokens`, as vLLM does), at most `default_max_tokens` when the server
        sets one; a request that sent `max_tokens` is refused, naming that value, when prompt + it do not fit."""
        param = "messages" if request.kind == "chat" else "prompt"
        jobs = []
        for ids in self.encode(request):
            room = self.max_model_len - len(ids)
            sent = request.params.max_tokens
            if room < 1:
                raise bad_request(
                    f"This model's maximum context length is {self.max_model_len} tokens, and the prompt alone is "
                    f"{len(ids)} tokens: no room for a completion. Shorten the prompt.", param,
                    "context_length_exceeded")
            if sent is None:
                budget = room if default_max_tokens is None else min(room, default_max_tokens)
            elif sent > room:
                raise bad_request(
                    f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                    f"{len(ids) + sent} tokens ({len(ids)} in the prompt, max_tokens={sent} for the completion). "
                    f"Lower max_tokens to at most {room}, shorten the prompt, or leave max_tokens out to get as "
                    "many tokens as fit.", "max_tokens", "context_length_exceeded")
            else:
                budget = sent
            jobs.append(RowJob(ids, replace(request.params, max_tokens=budget)))
        return jobs

    def tokenize_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt ids a chat request with these messages generates from (vLLM's `POST /tokenize`)."""
        return tokenize_prompts(self.tokenizer, [messages])[0]

    def tokenize_text(self, text: str, *, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def detokenize(self, ids: Sequence[int]) -> str:
        vocab = len(self.tokenizer)
        if any(not 0 <= i < vocab for i in ids):
            raise bad_request(f"token ids must be in [0, {vocab})", "tokens")
        return str(self.tokenizer.decode(list(ids)))

    @torch.no_grad()
    def generate_batch(self, adapter: str | None, rows: Sequence[RowJob]) -> None:
        """Continue every row with one `generate` call; rows share temperature/top_p/seed (see batch_key)."""
        if not rows:
            return
        with self._active(adapter) as model:
            scored = [r for r in rows if r.params.prompt_logprobs is not None]
            if scored:
                self._fill_prompt_logprobs(model, scored)
            self._generate(model, rows)

    @contextmanager
    def _active(self, adapter: str | None) -> Iterator[Any]:
        """The model with `adapter` applied (the base: adapters disabled) for the duration of the block."""
        model = self._select(adapter)
        if adapter is None and self._peft is not None:
            with self._peft.disable_adapter():
                yield model
        else:
            yield model

    def _fill_prompt_logprobs(self, model: Any, rows: Sequence[RowJob]) -> None:
        """Teacher-forced log-probs of every prompt token given the ones before it: one forward pass over the
        right-padded prompts (pads come after the real tokens, so positions and causal attention are as unpadded)."""
        width = max(len(r.prompt_ids) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row.prompt_ids)] = torch.tensor(row.prompt_ids, dtype=torch.long)
            attention_mask[i, : len(row.prompt_ids)] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [N, T, V]
        picked = token_logps(logits, input_ids)  # [N, T]; position 0 has no context
        shifted = logits[:, :-1, :].float()  # [N, T-1, V] predicts tokens 1..T-1
        chosen = torch.gather(shifted, 2, input_ids[:, 1:].unsqueeze(-1))  # [N, T-1, 1] the prompt token's logit
        ranks = (shifted > chosen).sum(-1) + 1  # [N, T-1], 1 = the most likely token
        top = max(r.params.prompt_logprobs or 0 for r in rows)
        if top:
            values, indices = torch.topk(torch.log_softmax(shifted, dim=-1), top, dim=-1)  # [N, T-1, top]
        for i, row in enumerate(rows):
            out: PromptLogprobs = [None]
            for t in range(1, len(row.prompt_ids)):
                token = row.prompt_ids[t]
                entry = {str(token): self._logprob_entry(token, float(picked[i, t]), int(ranks[i, t - 1]))}
                for k in range(row.params.prompt_logprobs or 0):
                    other = int(indices[i, t - 1, k])
                    entry.setdefault(str(other), self._logprob_entry(other, float(values[i, t - 1, k]), k + 1))
                out.append(entry)
            row.prompt_logprobs = out

    def _logprob_entry(self, token: int, logprob: float, rank: int) -> dict[str, Any]:
        return {"logprob": logprob, "rank": rank, "decoded_token": self.tokenizer.decode([token])}

    def _generate(self, model: Any, rows: Sequence[RowJob]) -> None:
        params = rows[0].params
        input_ids, attention_mask = left_pad([r.prompt_ids for r in rows], self.pad_id)
        config = GenerationConfig(
            max_new_tokens=max(r.params.max_tokens for r in rows),
            do_sample=not params.greedy,
            temperature=params.temperature if not params.greedy else None,
            top_p=params.top_p if not params.greedy else None,
            top_k=None,
            num_beams=1,
            eos_token_id=list(self.eos_ids),
            pad_token_id=self.pad_id,
        )
        if params.seed is not None:
            torch.manual_seed(params.seed)
        monitor = _RowMonitor(rows, self.tokenizer, self.eos_ids)
        model.generate(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                       generation_config=config, stopping_criteria=StoppingCriteriaList([monitor]))
        for row in rows:  # generate may stop on its own limits before a row's monitor did
            if not row.done:
                row.finish_reason = "length"
                _emit(row)

    def _select(self, adapter: str | None) -> Any:
        if adapter is None:
            return self._peft if self._peft is not None else self.base
        if adapter not in self.adapters:
            raise ServingError(404, f"The model `{adapter}` does not exist.", type="NotFoundError",
                               code="model_not_found", param="model")
        self._peft.set_adapter(adapter)
        return self._peft
