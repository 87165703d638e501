"""The fake server itself: protocol, knobs, concurrency, separate-process mode."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from openai import AsyncOpenAI, RateLimitError

from tests.support.fake_openai import FakeOpenAI, spawn_fake_openai
from trace_engine.judge.prompt import judge_messages
from trace_engine.policy import Policy

POLICY = Policy("Never VIOLATE.")


async def _raw_concurrent(port: int, n: int) -> float:
    """n concurrent calls on n raw keep-alive connections (measures the server, not a client pool)."""
    body = json.dumps({"model": "m", "messages": judge_messages(POLICY, "hi", "ok")}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
               b"content-length: %d\r\n\r\n" % len(body)) + body

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        await reader.readexactly(length)

    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]
    start = time.perf_counter()
    await asyncio.gather(*(one(r, w) for r, w in conns))
    elapsed = time.perf_counter() - start
    for _, w in conns:
        w.close()
    return elapsed


def test_128_concurrent_100ms_calls_overlap() -> None:
    with FakeOpenAI(latency=0.1) as fake:
        elapsed = asyncio.run(_raw_concurrent(fake.port, 128))
        assert elapsed < 1.0, elapsed  # serial would take 12.8 s; measured ~0.15 s
        assert fake.stats()["max_in_flight"] == 128
        assert fake.stats()["calls_total"] == 128


def test_verdict_from_marker_in_response_block_with_usage(fake: FakeOpenAI) -> None:
    async def go() -> tuple[str, str, int]:
        client = AsyncOpenAI(base_url=fake.base_url, api_key="k", max_retries=0)
        try:
            bad = await client.chat.completions.create(
                model="m", messages=judge_messages(POLICY, "say VIOLATE", "VIOLATE[C2] here"),
                response_format={"type": "json_object"})
            good = await client.chat.completions.create(
                model="m", messages=judge_messages(POLICY, "say VIOLATE", "fine"),
                response_format={"type": "json_object"})
            return bad.choices[0].message.content or "", good.choices[0].message.content or "", bad.usage.total_tokens
        finally:
            await client.close()

    bad, good, tokens = asyncio.run(go())
    assert json.loads(bad) == {"verdict": "violating", "clauses": ["C2"], "rationale": "the response contains VIOLATE"}
    assert json.loads(good)["verdict"] == "compliant"  # the marker in the *prompt* block does not count
    assert tokens > 0
    assert fake.stats()["calls_by_response"] == {"VIOLATE[C2] here": 1, "fine": 1}


def test_scripted_429_carries_retry_after(fake: FakeOpenAI) -> None:
    fake.fail_next("429", retry_after=7)

    async def go() -> None:
        client = AsyncOpenAI(base_url=fake.base_url, api_key="k", max_retries=0)
        try:
            await client.chat.completions.create(model="m", messages=judge_messages(POLICY, "p", "r"))
        finally:
            await client.close()

    with pytest.raises(RateLimitError) as info:
        asyncio.run(go())
    assert info.value.response.headers["retry-after"] == "7"
    assert fake.stats()["pending_failures"] == 0


def test_unknown_failure_kind_rejected(fake: FakeOpenAI) -> None:
    with pytest.raises(ValueError, match="unknown failure kind"):
        fake.fail_next("418")


def test_separate_process_serves_and_is_controllable() -> None:
    with spawn_fake_openai(latency=0.0) as proc:
        proc.configure(violate_marker="BAD")
        proc.fail_next("500")

        async def go() -> list[str]:
            client = AsyncOpenAI(base_url=proc.base_url, api_key="k", max_retries=0)
            out = []
            try:
                for _ in range(2):
                    try:
                        r = await client.chat.completions.create(
                            model="m", messages=judge_messages(POLICY, "p", "BAD"),
                            response_format={"type": "json_object"})
                        out.append(json.loads(r.choices[0].message.content or "")["verdict"])
                    except Exception as e:  # noqa: BLE001 - the scripted 500
                        out.append(type(e).__name__)
            finally:
                await client.close()
            return out

        assert asyncio.run(go()) == ["InternalServerError", "violating"]
        assert proc.stats()["calls_total"] == 2
        assert proc.requests()[0]["body"]["model"] == "m"
    assert proc.proc.poll() is not None
