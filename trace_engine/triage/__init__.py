"""Triage: judge both responses of every pair under the new policy -> INVERT / PUNISH / RETAIN (design.md §2).

`categorize` is the pure decision, `VerdictStore` the crash-safe verdict cache, `triage` the async runner and
`run_triage_stage` the engine call that writes `triaged.jsonl` and `summary.json`.
"""
