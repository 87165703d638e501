"""Serving LoRA adapters over the vLLM OpenAI-compatible protocol.

`protocol` (request parsing, response and error shapes) and `uvicorn_thread` import no torch, so the API process
can use them; `engine`, `batching` and `local_server` are the in-process transformers + peft backend, run in its own
process (`python -m trace_engine.serving.local_server`). Nothing here is imported eagerly.
"""
