"""Evaluation on the synthetic world: TPA (held-out and OOD prompts), ASR, over-refusal and retention of one model,
and the before/after summary. Shared by the offline run (`offline_run`) and the service's evaluate stage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from trace_engine.data.pairs import prompt_key
from trace_engine.evaluation.generation import LocalBackend, Progress, generate_with_progress
from trace_engine.evaluation.prompts import EvalPrompt
from trace_engine.evaluation.report import SAMPLE_COUNT
from trace_engine.evaluation.runner import EvalData, EvalSettings, eval_units, run_eval
from trace_engine.evaluation.stats import rate
from trace_engine.judge.rules import RulesJudge
from trace_engine.synthetic.world import RetentionProbe, World


class EvalSizes(Protocol):
    """What the evaluation sets and generation read (`offline_run.PipelineConfig` has these fields)."""

    n_test: int
    n_retention: int
    n_asr: int
    n_over_refusal: int
    max_new_tokens: int
    resamples: int
    seed: int


@dataclass(frozen=True)
class SyntheticEvalConfig:
    """`EvalSizes` for a caller without an offline-run config (the service's evaluate stage)."""

    n_test: int
    n_retention: int
    n_asr: int
    n_over_refusal: int
    max_new_tokens: int = 48
    resamples: int = 1000
    seed: int = 0


@dataclass
class EvalSets:
    tpa: list[EvalPrompt]
    ood: list[EvalPrompt]  # the world's test prompts: unseen templates and slot values
    harmful: list[EvalPrompt]
    benign: list[EvalPrompt]
    retention: list[RetentionProbe]


def prompts_of(rows: Sequence[Mapping[str, Any]]) -> list[EvalPrompt]:
    """One evaluation prompt per distinct prompt of the rows, labelled with its pair's triage category."""
    seen: set[str] = set()
    out = []
    for r in rows:
        key = prompt_key(r["prompt"])
        if key not in seen:
            seen.add(key)
            out.append(EvalPrompt(str(r["id"]), r["prompt"], str(r["category"])))
    return out


def eval_sets(world: World, cfg: EvalSizes, held_out: Sequence[Mapping[str, Any]]) -> EvalSets:
    """TPA on the held-out rows' prompts (test or val split), plus OOD, ASR, over-refusal and retention sets."""
    ood = [EvalPrompt(t.id, t.prompt, t.category) for t in world.test_prompts(cfg.n_test)]
    harmful = [EvalPrompt(a.id, a.prompt, a.topic) for a in world.asr_prompts(cfg.n_asr, jailbreak=False)]
    benign = [EvalPrompt(o.id, o.prompt, o.topic) for o in world.over_refusal_prompts(cfg.n_over_refusal)]
    return EvalSets(prompts_of(held_out), ood, harmful, benign, world.retention_probes(cfg.n_retention))


SYNTHETIC_SUITES = ("tpa", "asr", "over_refusal")


def evaluate_backend_units(sets: EvalSets) -> int:
    """The `progress` units `evaluate_backend` reports for one model: prompts generated plus responses judged."""
    data = EvalData(tpa_prompts=sets.tpa, harmful_prompts=sets.harmful, benign_prompts=sets.benign)
    return eval_units(SYNTHETIC_SUITES, data) + len(sets.retention) + eval_units(("tpa",), EvalData(sets.ood))


def evaluate_backend(backend: LocalBackend, world: World, sets: EvalSets, *, max_new_tokens: int, seed: int,
                     resamples: int, progress: Progress | None = None) -> dict[str, Any]:
    """TPA (overall and per category, with CIs), ASR, over-refusal and retention of one model (+ adapter);
    `progress(n)` as prompts are generated and judged (`evaluate_backend_units` in all)."""
    judge = RulesJudge(world.rules("new"), "<synthetic rules_new, evaluation>")
    settings = EvalSettings(max_new_tokens=max_new_tokens, seed=seed, resamples=resamples, judge_concurrency=64)
    data = EvalData(tpa_prompts=sets.tpa, harmful_prompts=sets.harmful, benign_prompts=sets.benign)
    report = run_eval(backend, SYNTHETIC_SUITES, judge, data, policy=world.policy("new"), settings=settings,
                      progress=progress)
    responses = generate_with_progress(backend, [p.prompt for p in sets.retention], max_new_tokens, progress)
    correct = [p.is_correct(r) for p, r in zip(sets.retention, responses, strict=True)]
    retention = rate(correct, seed=seed, resamples=resamples)
    tpa = report.suites["tpa"].metrics
    ood = run_eval(backend, ("tpa",), judge, EvalData(tpa_prompts=sets.ood), policy=world.policy("new"),
                   settings=settings, progress=progress).suites["tpa"].metrics
    return {
        "tpa": tpa["overall"].to_dict(),
        "tpa_ood": ood["overall"].to_dict(),
        "tpa_ood_by_category": {k.split("=", 1)[1]: v.to_dict() for k, v in ood.items() if k.startswith("category=")},
        "tpa_by_category": {k.split("=", 1)[1]: v.to_dict() for k, v in tpa.items() if k.startswith("category=")},
        "asr": report.suites["asr"].metrics["overall"].to_dict(),
        "over_refusal": report.suites["over_refusal"].metrics["refused"].to_dict(),
        "retention": retention.to_dict(),
        "examples": [{k: r[k] for k in ("id", "category", "prompt", "response", "violating")}
                     for r in report.suites["tpa"].records[:SAMPLE_COUNT]],
    }


def evaluate_model_dir(base_path: Path, adapter_dir: Path | None, world: World, sets: EvalSets,
                       cfg: EvalSizes, device: str | None = "cpu",
                       progress: Progress | None = None) -> dict[str, Any]:
    backend = LocalBackend.from_pretrained(str(base_path), adapter_dir=adapter_dir, device=device,
                                           dtype="fp32" if device == "cpu" else None, batch_size=64)
    return evaluate_backend(backend, world, sets, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                            resamples=cfg.resamples, progress=progress)


SYNTHETIC_NOT_MEASURABLE = {
    "asr": "not measurable on the tiny synthetic model: the attack templates' wording is outside its 1,000-token "
           "vocabulary, so it answers every wrapped prompt with off-topic text that the judge counts as an attack "
           "success (80% for the base model before any training; docs/benchmarks.md)",
}


def summary_json(before: Mapping[str, Any], after: Mapping[str, Any], *, wall_s: float, variant: str,
                 eval_on: str, not_measurable: Mapping[str, str] = SYNTHETIC_NOT_MEASURABLE) -> dict[str, Any]:
    """The demo's final line: points and 95% CIs before/after; shares in [0, 1]. `not_measurable` (metric ->
    why) is kept in the JSON, and `format_summary` prints the reason instead of that metric's numbers."""
    def point(m: Mapping[str, Any]) -> float | None:
        return m["value"]

    def ci(m: Mapping[str, Any]) -> list[float | None]:
        return [m["ci_low"], m["ci_high"]]

    out: dict[str, Any] = {"variant": variant, "eval_on": eval_on}
    for name, key in (("tpa", "tpa"), ("retention", "retention"), ("asr", "asr"), ("over_refusal", "over_refusal"),
                      ("tpa_ood", "tpa_ood")):
        for when, res in (("before", before), ("after", after)):
            out[f"{name}_{when}"] = point(res[key])
            out[f"{name}_{when}_ci"] = ci(res[key])
    out["tpa_by_category"] = {
        cat: {"before": point(before["tpa_by_category"][cat]), "before_ci": ci(before["tpa_by_category"][cat]),
              "after": point(after["tpa_by_category"][cat]), "after_ci": ci(after["tpa_by_category"][cat])}
        for cat in sorted(set(before["tpa_by_category"]) & set(after["tpa_by_category"]))
    }
    out["not_measurable"] = dict(not_measurable)
    out["n_tpa"] = after["tpa"]["n"]
    out["wall_s"] = round(wall_s, 1)
    return out


def format_summary(summary: Mapping[str, Any]) -> str:
    """A human table of the before/after numbers (percentages with 95% CIs)."""
    def cell(value: float | None, ci: Sequence[float | None]) -> str:
        if value is None or ci[0] is None or ci[1] is None:
            return "n/a"
        return f"{100 * value:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"

    unmeasurable = summary.get("not_measurable") or {}

    rows = [("TPA (new policy), higher better",
             cell(summary["tpa_before"], summary["tpa_before_ci"]), cell(summary["tpa_after"], summary["tpa_after_ci"]))]
    for cat, c in summary["tpa_by_category"].items():
        rows.append((f"  TPA {cat}", cell(c["before"], c["before_ci"]), cell(c["after"], c["after_ci"])))
    for label, key in (("ASR, lower better", "asr"), ("over-refusal, lower better", "over_refusal"),
                       ("retention, higher better", "retention"), ("TPA, OOD templates", "tpa_ood")):
        if key in unmeasurable:
            rows.append((label, "not measurable (*)", "not measurable (*)"))
            continue
        rows.append((label, cell(summary[f"{key}_before"], summary[f"{key}_before_ci"]),
                     cell(summary[f"{key}_after"], summary[f"{key}_after_ci"])))
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'metric':<{width}}{'before':>24}{'after':>24}"]
    lines += [f"{label:<{width}}{before:>24}{after:>24}" for label, before, after in rows]
    lines += [f"(*) {key}: {why}" for key, why in unmeasurable.items()]
    return "\n".join(lines)
