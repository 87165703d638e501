"""Presets: map a public dataset's own columns to preference pairs.

`pku_saferlhf` (PKU-Alignment/PKU-SafeRLHF: `prompt`, `response_0`, `response_1`, `is_response_0_safe`,
`is_response_1_safe`, `safer_response_id`):

* exactly one response is safe -> it is `chosen` (case `one_safe`), whatever `safer_response_id` says;
* both safe or both unsafe -> `safer_response_id` decides (cases `both_safe`, `both_unsafe`);
* no usable preference (`safer_response_id` not 0 or 1 and no single safe response) -> skipped
  (`skipped_no_preference`);
* a row missing a column or holding a wrong type -> an error issue naming the column (`skipped_malformed`).

Both-unsafe pairs are kept on purpose: triage sends them to PUNISH, where both responses are suppressed.
Each pair keeps its provenance: `source_index` (0-based row in the source split), `pku_case`,
`chosen_response_index`, `is_chosen_safe`, `is_rejected_safe`, `safer_response_id` (and `better_response_id` when
present).
"""

from __future__ import annotations

from typing import Any

from trace_engine.data.io import DatasetError
from trace_engine.data.validate import Issue, Preset, PresetOutcome

PKU_CASES = ("one_safe", "both_safe", "both_unsafe", "skipped_no_preference", "skipped_malformed")


class PkuSafeRlhf:
    """The PKU-SafeRLHF column mapping described in the module docstring."""

    name = "pku_saferlhf"
    text_columns = ("prompt", "response_0", "response_1")
    safety_columns = ("is_response_0_safe", "is_response_1_safe")

    def map_row(self, data: dict[str, Any], row: int) -> PresetOutcome:
        problem = self._column_problem(data, row)
        if problem is not None:
            return PresetOutcome(None, "skipped_malformed", problem)
        safe = (data["is_response_0_safe"], data["is_response_1_safe"])
        safer = data.get("safer_response_id")
        safer_valid = type(safer) is int and safer in (0, 1)
        if safe[0] != safe[1]:
            chosen_index, case = (0 if safe[0] else 1), "one_safe"
        elif safer_valid:
            chosen_index, case = safer, ("both_safe" if safe[0] else "both_unsafe")
        else:
            return PresetOutcome(None, "skipped_no_preference")
        rejected_index = 1 - chosen_index
        pair = {
            "prompt": data["prompt"],
            "chosen": data[f"response_{chosen_index}"],
            "rejected": data[f"response_{rejected_index}"],
            "source_index": row - 1,
            "pku_case": case,
            "chosen_response_index": chosen_index,
            "is_chosen_safe": safe[chosen_index],
            "is_rejected_safe": safe[rejected_index],
            "safer_response_id": safer,
        }
        if "better_response_id" in data:
            pair["better_response_id"] = data["better_response_id"]
        return PresetOutcome(pair, case)

    def _column_problem(self, data: dict[str, Any], row: int) -> Issue | None:
        for column in self.text_columns + self.safety_columns:
            if data.get(column) is None:
                return Issue(row, column, "missing_field", f"PKU-SafeRLHF column {column} is missing")
        for column in self.text_columns:
            if not isinstance(data[column], str):
                return Issue(row, column, "wrong_type", f"PKU-SafeRLHF column {column} must be a string")
        for column in self.safety_columns:
            if not isinstance(data[column], bool):
                return Issue(row, column, "wrong_type", f"PKU-SafeRLHF column {column} must be a boolean")
        return None


PRESETS: dict[str, Preset] = {PkuSafeRlhf.name: PkuSafeRlhf()}


def get_preset(name: str) -> Preset:
    """Look a preset up by name, with a message listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise DatasetError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
