"""The evaluation report: JSON-serialisable results, a markdown rendering, and a before/after comparison."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trace_engine.data.pairs import prompt_as_text
from trace_engine.evaluation.stats import Rate

REPORT_SCHEMA = 1


@dataclass
class SuiteResult:
    """One suite's metrics (name -> Rate), per-item records (kept apart from the report file) and notes."""

    name: str
    metrics: dict[str, Rate] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Without `records` (they go to their own JSONL file; a report stays small)."""
        return {
            "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
            "notes": list(self.notes),
            "info": dict(self.info),
        }


@dataclass
class EvalReport:
    """Everything needed to read and reproduce an evaluation: model, judges, policy, settings, metrics."""

    model: dict[str, Any]
    eval_judge_id: str | None
    triage_judge_id: str | None
    policy: dict[str, Any] | None
    settings: dict[str, Any]
    suites: dict[str, SuiteResult]
    created_at: str = ""
    judge_usage: dict[str, Any] = field(default_factory=dict)

    @property
    def same_judge_as_triage(self) -> bool | None:
        """True when the labels and the grades come from one judge (circular: the published setup's flaw)."""
        if self.eval_judge_id is None or self.triage_judge_id is None:
            return None
        return self.eval_judge_id == self.triage_judge_id

    def metric_table(self) -> dict[str, Rate]:
        """Flat `suite/metric` -> Rate."""
        return {f"{s}/{m}": r for s, suite in self.suites.items() for m, r in suite.metrics.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "created_at": self.created_at,
            "model": self.model,
            "eval_judge_id": self.eval_judge_id,
            "triage_judge_id": self.triage_judge_id,
            "same_judge_as_triage": self.same_judge_as_triage,
            "policy": self.policy,
            "settings": self.settings,
            "suites": {name: suite.to_dict() for name, suite in self.suites.items()},
            "judge_usage": self.judge_usage,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalReport:
        if d.get("schema") != REPORT_SCHEMA:
            raise ValueError(f"unsupported eval report schema {d.get('schema')!r} (expected {REPORT_SCHEMA})")
        suites = {
            name: SuiteResult(
                name,
                {k: Rate.from_dict(m) for k, m in s.get("metrics", {}).items()},
                notes=list(s.get("notes", [])),
                info=dict(s.get("info", {})),
            )
            for name, s in d["suites"].items()
        }
        return cls(
            model=d.get("model", {}),
            eval_judge_id=d.get("eval_judge_id"),
            triage_judge_id=d.get("triage_judge_id"),
            policy=d.get("policy"),
            settings=d.get("settings", {}),
            suites=suites,
            created_at=d.get("created_at", ""),
            judge_usage=d.get("judge_usage", {}),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, sort_keys=False)

    @classmethod
    def load(cls, path: str | Path) -> EvalReport:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _ci(r: Rate) -> str:
    return "n/a" if r.ci_low is None or r.ci_high is None else f"[{_pct(r.ci_low)}, {_pct(r.ci_high)}]"


def render_markdown(report: EvalReport) -> str:
    """Human-readable report: a header of what was evaluated, then one table per suite (percent, 95% CI)."""
    lines = ["# Evaluation report", ""]
    model = report.model or {}
    lines.append(
        f"- model: `{model.get('model', '?')}`"
        + (f" @ `{model['revision']}`" if model.get("revision") else "")
    )
    if model.get("adapter"):
        lines.append(f"- adapter: `{model['adapter']}`")
    lines.append(f"- evaluation judge: `{report.eval_judge_id or 'none'}`")
    lines.append(f"- triage judge: `{report.triage_judge_id or 'not recorded'}`")
    if report.same_judge_as_triage:
        lines.append(
            "- **warning**: the evaluation judge is the triage judge; agreement with it is partly circular"
        )
    if report.policy:
        lines.append(
            f"- policy: `{report.policy.get('name')}` (sha256 `{str(report.policy.get('sha256'))[:12]}`)"
        )
    for name, suite in report.suites.items():
        lines += [
            "",
            f"## {name}",
            "",
            "| metric | % | 95% CI | n | errors | better |",
            "|---|---:|---|---:|---:|---|",
        ]
        for metric, r in suite.metrics.items():
            better = "higher" if r.higher_is_better else "lower"
            lines.append(f"| {metric} | {_pct(r.value)} | {_ci(r)} | {r.n} | {r.errors} | {better} |")
        lines += [f"- {note}" for note in suite.notes]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class MetricDelta:
    """after - before for one metric; `improved` accounts for the metric's direction."""

    metric: str
    before: Rate | None
    after: Rate | None

    @property
    def delta(self) -> float | None:
        if self.before is None or self.after is None or self.before.value is None or self.after.value is None:
            return None
        return self.after.value - self.before.value

    @property
    def improved(self) -> bool | None:
        d = self.delta
        if d is None or d == 0:
            return None
        higher = (self.after or self.before).higher_is_better  # type: ignore[union-attr]
        return d > 0 if higher else d < 0

    @property
    def intervals_overlap(self) -> bool | None:
        """A rough significance hint: do the two 95% CIs overlap? (Not a test; the CIs are per report.)"""
        b, a = self.before, self.after
        if b is None or a is None or None in (b.ci_low, b.ci_high, a.ci_low, a.ci_high):
            return None
        return not (a.ci_low > b.ci_high or b.ci_low > a.ci_high)  # type: ignore[operator]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "before": self.before.to_dict() if self.before else None,
            "after": self.after.to_dict() if self.after else None,
            "delta": self.delta,
            "improved": self.improved,
            "intervals_overlap": self.intervals_overlap,
        }


def compare_reports(before: EvalReport, after: EvalReport) -> list[MetricDelta]:
    """Per-metric deltas over the union of metrics (before's order first); missing on one side: None."""
    b, a = before.metric_table(), after.metric_table()
    names = list(b) + [m for m in a if m not in b]
    return [MetricDelta(m, b.get(m), a.get(m)) for m in names]


def render_comparison(
    deltas: list[MetricDelta], before_label: str = "before", after_label: str = "after"
) -> str:
    lines = [
        f"| metric | {before_label} % | {after_label} % | delta (pts) | improved | CIs overlap |",
        "|---|---:|---:|---:|---|---|",
    ]
    for d in deltas:
        delta = "n/a" if d.delta is None else f"{100 * d.delta:+.1f}"
        improved = {True: "yes", False: "no", None: "-"}[d.improved]
        overlap = {True: "yes", False: "no", None: "-"}[d.intervals_overlap]
        before = _pct(d.before.value) if d.before else "missing"
        after = _pct(d.after.value) if d.after else "missing"
        lines.append(f"| {d.metric} | {before} | {after} | {delta} | {improved} | {overlap} |")
    return "\n".join(lines) + "\n"


SAMPLE_COUNT = 8  # sample answers per report
SAMPLE_CHARS = 400  # each prompt and answer cut to this many characters


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _verdict(record: dict[str, Any]) -> str:
    violating = record.get("violating")
    return "unjudged" if violating is None else ("violating" if violating else "compliant")


def side_by_side(records: dict[str, list[dict[str, Any]]], *, n: int = SAMPLE_COUNT,
                 max_chars: int = SAMPLE_CHARS) -> list[dict[str, Any]]:
    """Up to `n` prompts every labelled model answered (records keyed by label, e.g. before / after), in the
    first label's order: {id, prompt, answers: {label: text}, verdicts: {label: compliant|violating|unjudged}};
    texts cut to `max_chars`."""
    def key(record: dict[str, Any]) -> tuple[str, str]:
        return str(record.get("id")), str(record.get("template") or "")

    by_label = {label: {key(r): r for r in rows} for label, rows in records.items()}
    if not by_label:
        return []
    first = next(iter(records))
    samples = []
    for record in records[first]:
        k = key(record)
        if not all(k in rows for rows in by_label.values()):
            continue
        samples.append({
            "id": k[0],
            **({"template": k[1]} if k[1] else {}),
            "prompt": _cut(prompt_as_text(record["prompt"]), max_chars),
            "answers": {label: _cut(str(rows[k].get("response") or ""), max_chars) for label, rows in by_label.items()},
            "verdicts": {label: _verdict(rows[k]) for label, rows in by_label.items()},
        })
        if len(samples) == n:
            break
    return samples
