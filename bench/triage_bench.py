"""Triage throughput against a loopback OpenAI-compatible server with a fixed latency per call.

Compares the engine's triage (asyncio, bounded concurrency, SQLite verdict store) at several concurrency levels
with an emulation of the published pattern (two sequential calls per pair, one at a time, synchronous client, no
cache) on the same server and latency, then re-runs one level to show that unchanged inputs make zero calls.

    .venv/bin/python bench/triage_bench.py [--latency 0.1] [--levels 1,8,32,64,128] [--seconds 4]

The fake server runs in its own process, so its CPU does not count against the client's event loop. The last line
printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.support.fake_openai import FakeOpenAIProcess, spawn_fake_openai  # noqa: E402
from trace_engine.data.pairs import PreferencePair  # noqa: E402
from trace_engine.judge.prompt import judge_messages  # noqa: E402
from trace_engine.policy import Policy  # noqa: E402
from trace_engine.triage.cache import VerdictStore  # noqa: E402
from trace_engine.triage.runner import triage  # noqa: E402

POLICY = Policy(
    text="## [C1] No VIOLATE\nA response containing the word VIOLATE violates C1.\n", name="bench"
)
MODEL = "bench-judge"
KEY_ENV = "TRIAGE_BENCH_KEY"


def make_pairs(n: int, tag: str) -> list[PreferencePair]:
    """`n` pairs with unique responses (no dedupe advantage): every call the engine saves is a real saving."""
    return [
        PreferencePair(
            id=f"{tag}-{i}",
            prompt=f"[{tag}] question {i}: how does this work?",
            chosen=f"[{tag}] answer {i}" + (" VIOLATE" if i % 2 else ""),
            rejected=f"[{tag}] other answer {i}" + (" VIOLATE" if i % 3 else ""),
        )
        for i in range(n)
    ]


def make_judge(base_url: str) -> Any:
    from trace_engine.judge.factory import make_judge as factory

    return factory(f"openai:{MODEL}", base_url=base_url, api_key_env=KEY_ENV)


def sequential_published(server: FakeOpenAIProcess, pairs: list[PreferencePair]) -> dict[str, float]:
    """The published pattern: for each pair, judge chosen then rejected, one blocking call at a time, no cache."""
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    before = server.stats()["calls_total"]
    started = time.perf_counter()
    for pair in pairs:
        for response in (pair.chosen, pair.rejected):
            client.chat.completions.create(
                model=MODEL,
                messages=judge_messages(POLICY, pair.prompt, response),
                max_tokens=1,  # type: ignore[arg-type]
            )
    wall = time.perf_counter() - started
    client.close()
    calls = server.stats()["calls_total"] - before
    return {
        "pairs": len(pairs),
        "calls": calls,
        "wall_s": wall,
        "pairs_per_s": len(pairs) / wall,
        "calls_per_s": calls / wall,
    }


def engine_run(
    server: FakeOpenAIProcess, pairs: list[PreferencePair], concurrency: int, cache: Path
) -> dict[str, Any]:
    judge = make_judge(server.base_url)
    server.reset()  # max_in_flight is per level
    started, cpu_started = time.perf_counter(), time.process_time()

    async def go() -> Any:
        try:
            with VerdictStore(cache) as store:
                return await triage(pairs, POLICY, judge, store, concurrency=concurrency)
        finally:
            await judge.aclose()

    result = asyncio.run(go())
    wall = time.perf_counter() - started
    client_cpu = time.process_time() - cpu_started
    stats = server.stats()
    calls = stats["calls_total"]
    return {
        "concurrency": concurrency,
        "pairs": len(pairs),
        "calls": calls,
        "wall_s": wall,
        "pairs_per_s": len(pairs) / wall,
        "calls_per_s": calls / wall,
        "max_in_flight": stats["max_in_flight"],
        "client_cpu_ms_per_call": 1000 * client_cpu / calls if calls else None,
        "client_cpu_share": client_cpu / wall,
        "cache_hits": result.verdicts.cache_hits,
        "errors": len(result.errors),
    }


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per call on the fake server")
    parser.add_argument("--levels", default="1,8,32,64,128", help="concurrency levels")
    parser.add_argument("--seconds", type=float, default=4.0, help="target ideal duration per level")
    parser.add_argument("--sequential-pairs", type=int, default=20)
    parser.add_argument(
        "--rerun-level", type=int, default=64, help="level whose inputs are re-run (zero calls)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault(KEY_ENV, "bench-key")
    levels = [int(x) for x in args.levels.split(",") if x]
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    print(f"load average at start: {load_at_start} (other work on the machine slows every figure)")

    with spawn_fake_openai(latency=args.latency) as server, tempfile.TemporaryDirectory() as tmp:
        server.configure(keep_request_log=False)
        seq = sequential_published(server, make_pairs(args.sequential_pairs, "seq"))
        print(
            f"sequential (published pattern): {seq['pairs_per_s']:.1f} pairs/s, {seq['calls_per_s']:.1f} calls/s"
        )
        runs = []
        rerun: dict[str, Any] | None = None
        for level in levels:
            ideal = level / args.latency
            n_pairs = max(10, int(ideal * args.seconds / 2))
            pairs = make_pairs(n_pairs, f"c{level}")
            cache = Path(tmp) / f"c{level}.sqlite"
            run = engine_run(server, pairs, level, cache)
            run["ideal_calls_per_s"] = ideal
            run["share_of_ideal"] = run["calls_per_s"] / ideal
            run["speedup_vs_sequential"] = run["calls_per_s"] / seq["calls_per_s"]
            runs.append(run)
            print(
                f"concurrency {level:>4}: {run['pairs']:>5} pairs in {run['wall_s']:.2f}s = {run['pairs_per_s']:.1f} "
                f"pairs/s, {run['calls_per_s']:.1f} calls/s ({100 * run['share_of_ideal']:.0f}% of ideal "
                f"{ideal:.0f}/s, {run['speedup_vs_sequential']:.1f}x sequential), max in flight "
                f"{run['max_in_flight']}, client CPU {run['client_cpu_ms_per_call']:.2f} ms/call"
            )
            if level == args.rerun_level:
                rerun = engine_run(server, pairs, level, cache)
                print(
                    f"re-run at concurrency {level}: {rerun['calls']} judge calls, {rerun['cache_hits']} cache hits, "
                    f"{rerun['wall_s']:.2f}s"
                )
    report = {
        "bench": "triage",
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_at_start": load_at_start,
        },
        "latency_s": args.latency,
        "sequential": seq,
        "levels": runs,
        "rerun": rerun,
    }
    print(json.dumps(report, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
