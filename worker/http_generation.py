"""`HttpGenerationBackend`: the evaluation `GenerationBackend` over the serving backend's chat completions, so
evaluation jobs generate through the same path clients use (vLLM's batching in production; the local server in
embedded mode). Requests run concurrently (the server batches them); greedy, temperature 0.

Adapters are loaded with vLLM's `/v1/load_lora_adapter` under their registry id (the name the gateway uses too),
and unloaded afterwards only if this backend loaded them. Log-likelihood scoring (the `capability` suite) is not
part of the chat protocol: the evaluation stage runs capability in-process instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import httpx

from trace_engine.data.pairs import Prompt


class ServingGenerationError(RuntimeError):
    """The serving backend refused or failed a request the evaluation needs."""


class HttpGenerationBackend:
    def __init__(self, base_url: str, *, adapter: tuple[str, str] | None = None, concurrency: int = 16,
                 timeout_s: float = 300.0, info: dict[str, Any] | None = None, keep_loaded: bool = False) -> None:
        """`base_url` without `/v1`; `adapter` = (name on the backend, path as the backend sees it);
        `keep_loaded`: never unload it (the null adapter the gateway shares)."""
        self.base_url = base_url.rstrip("/")
        self.adapter = adapter
        self.keep_loaded = keep_loaded
        self.concurrency = max(1, concurrency)
        self._client = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout_s, connect=5.0),
                                    limits=httpx.Limits(max_connections=self.concurrency))
        self._info = dict(info or {})
        self._loaded_here = False
        self._model: str | None = None

    def close(self) -> None:
        if self.adapter is not None and self._loaded_here and not self.keep_loaded:
            self._client.post("/v1/unload_lora_adapter", json={"lora_name": self.adapter[0]})
            self._loaded_here = False
        self._client.close()

    def __enter__(self) -> HttpGenerationBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def model_name(self) -> str:
        """The name to send as `model`: the adapter's (loaded first), else the backend's base model."""
        if self._model is not None:
            return self._model
        if self.adapter is None:
            cards = self._checked(self._client.get("/v1/models"), "listing models").json().get("data") or []
            bases = [c["id"] for c in cards if isinstance(c, dict) and not c.get("parent") and c.get("id")]
            if not bases:
                raise ServingGenerationError("the serving backend lists no base model")
            self._model = str(bases[0])
        else:
            name, path = self.adapter
            response = self._client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
            if not (response.status_code == 400 and "already" in response.text.lower()):
                self._checked(response, f"loading adapter {name}")
                self._loaded_here = True
            self._model = name
        return self._model

    def describe(self) -> dict[str, Any]:
        return {"backend": "serving-http", "url": self.base_url, "model": self.model_name(), **self._info}

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int = 256, *,
                 batch_size: int | None = None, progress: Callable[[int], None] | None = None) -> list[str]:
        """Concurrent requests; `progress(1)` on this thread as each answer arrives."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not prompts:
            return []
        model = self.model_name()
        workers = min(batch_size or self.concurrency, self.concurrency, len(prompts))
        out: list[str] = [""] * len(prompts)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval-gen") as pool:
            futures = {pool.submit(self._one, model, p, max_new_tokens): i for i, p in enumerate(prompts)}
            try:
                for future in as_completed(futures):
                    out[futures[future]] = future.result()
                    if progress is not None:
                        progress(1)
            except BaseException:  # a failed request or a cancel: drop the requests not yet sent
                for future in futures:
                    future.cancel()
                raise
        return out

    def loglikelihood(self, prompt: Prompt, continuations: Sequence[str]) -> list[float]:
        raise NotImplementedError("log-likelihoods are not part of the chat protocol; capability runs in-process")

    def _one(self, model: str, prompt: Prompt, max_new_tokens: int) -> str:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        body = {"model": model, "messages": messages, "max_tokens": max_new_tokens, "temperature": 0.0, "seed": 0}
        data = self._checked(self._client.post("/v1/chat/completions", json=body), "generating").json()
        return str(data["choices"][0]["message"].get("content") or "")

    @staticmethod
    def _checked(response: httpx.Response, doing: str) -> httpx.Response:
        if response.status_code >= 400:
            raise ServingGenerationError(f"serving backend failed while {doing}: HTTP {response.status_code} "
                                         f"{response.text[:300]}")
        return response


def serving_backend(settings: Any, adapter: tuple[str, str] | None, info: dict[str, Any] | None = None
                    ) -> HttpGenerationBackend:
    """The evaluation backend on the configured server. Base-model generations go through the operator's null
    adapter when isolation is on (a LoRA-enabled vLLM can apply other rows' adapters to adapter-less rows of the
    same batch: issue 17, docs/serving.md), loaded once and left loaded for the gateway."""
    url = settings.serving_api_url
    if adapter is not None or settings.serving_isolation == "off":
        return HttpGenerationBackend(url, adapter=adapter, info=info)
    from core.null_adapter import isolation_adapters

    null, _ = isolation_adapters(settings)
    return HttpGenerationBackend(url, adapter=(null.name, null.path), info={**(info or {}), "isolation": null.name},
                                 keep_loaded=True)
