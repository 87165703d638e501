"""Evaluation of a (re-aligned) model: policy agreement, attack success, over-refusal, general capability."""

from trace_engine.evaluation.generation import GenerationBackend, LocalBackend
from trace_engine.evaluation.report import EvalReport, SuiteResult, compare_reports, render_markdown
from trace_engine.evaluation.runner import SUITES, EvalData, EvalSettings, arun_eval, run_eval
from trace_engine.evaluation.stats import Rate, bootstrap_ci, rate

__all__ = [
    "SUITES",
    "EvalData",
    "EvalReport",
    "EvalSettings",
    "GenerationBackend",
    "LocalBackend",
    "Rate",
    "SuiteResult",
    "arun_eval",
    "bootstrap_ci",
    "compare_reports",
    "rate",
    "render_markdown",
    "run_eval",
]
