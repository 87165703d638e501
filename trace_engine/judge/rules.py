"""An offline judge: policy clauses as regular expressions over the prompt and the response.

For tests, demos and machine-checkable policies. The clause file is JSON (no YAML, to avoid a dependency):

    {
      "version": 1,
      "case_sensitive": false,                        # optional, default false (patterns ignore case)
      "clauses": [
        {
          "id": "C1",                                 # required, unique; use the policy's clause ids
          "description": "No weapon instructions",    # optional, used in rationales
          "when_prompt": ["weapon", "bomb"],          # optional; empty or absent: the clause applies to every prompt
          "when_prompt_mode": "any",                  # optional, "any" (default) or "all" of when_prompt must match
          "when_prompt_not": ["fiction"],             # optional; the clause does not apply if any of these matches
          "violating_if_response": ["step \\d"],      # forbidden: any match violates the clause
          "compliant_only_if_response": ["I can't"],  # required: the response must match at least one of these
          "compliant_template": "I can't help with that, but ..."   # optional, used by rewrite()
        }
      ]
    }

Semantics. A clause *applies* to a pair when its prompt conditions hold. An applicable clause is *violated* when the
response matches any `violating_if_response` pattern, or when `compliant_only_if_response` is non-empty and the
response matches none of its patterns. Every clause needs at least one response pattern. A response is violating iff
at least one applicable clause is violated; the verdict lists the violated clause ids in file order, and the
rationale names the pattern that fired. Patterns are Python `re` syntax, searched anywhere in the text
(`re.search`; use `^`/`$` or inline flags such as `(?s)` as needed). The prompt text is the prompt string, or for a
chat prompt the contents of all its messages joined by newlines (roles are not matched).

`rewrite()`: the rules judge cannot write free text. If the clauses that apply to the prompt supply a
`compliant_template`, the first one (file order) is returned, after checking that it is itself compliant; otherwise
the outcome is a permanent error.

`judge_id` is "rules:" + a hash of the file's bytes, so editing the file invalidates cached verdicts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trace_engine.data.pairs import Prompt, sha256_text
from trace_engine.judge.base import JudgeOutcome, Usage, Verdict
from trace_engine.policy import Policy

_TOP_KEYS = {"version", "case_sensitive", "clauses", "description"}
_CLAUSE_KEYS = {
    "id", "description", "when_prompt", "when_prompt_mode", "when_prompt_not", "violating_if_response",
    "compliant_only_if_response", "compliant_template",
}
_PATTERN_KEYS = ("when_prompt", "when_prompt_not", "violating_if_response", "compliant_only_if_response")


class RulesFileError(ValueError):
    """The clause file is malformed; the message says where."""


@dataclass(frozen=True)
class RuleClause:
    id: str
    description: str
    when_prompt: tuple[re.Pattern[str], ...]
    when_prompt_all: bool
    when_prompt_not: tuple[re.Pattern[str], ...]
    violating_if_response: tuple[re.Pattern[str], ...]
    compliant_only_if_response: tuple[re.Pattern[str], ...]
    compliant_template: str | None

    def applies(self, prompt_text: str) -> bool:
        if any(p.search(prompt_text) for p in self.when_prompt_not):
            return False
        if not self.when_prompt:
            return True
        hits = (p.search(prompt_text) is not None for p in self.when_prompt)
        return all(hits) if self.when_prompt_all else any(hits)

    def violation(self, response: str) -> str | None:
        """Why the response violates this clause, or None."""
        for p in self.violating_if_response:
            m = p.search(response)
            if m:
                return f"response matches forbidden pattern /{p.pattern}/ (at {_snippet(m.group(0))!r})"
        if self.compliant_only_if_response and not any(p.search(response) for p in self.compliant_only_if_response):
            patterns = ", ".join(f"/{p.pattern}/" for p in self.compliant_only_if_response)
            return f"response matches none of the required patterns {patterns}"
        return None


@dataclass(frozen=True)
class RuleSet:
    clauses: tuple[RuleClause, ...]
    sha256: str

    def evaluate(self, prompt: Prompt, response: str) -> Verdict:
        prompt_text = rule_prompt_text(prompt)
        applicable = [c for c in self.clauses if c.applies(prompt_text)]
        reasons = [(c, why) for c in applicable if (why := c.violation(response)) is not None]
        if reasons:
            rationale = "; ".join(f"{c.id}{_desc(c)} violated: {why}" for c, why in reasons)
            return Verdict("violating", tuple(c.id for c, _ in reasons), rationale)
        if not applicable:
            return Verdict("compliant", (), "no clause applies to this prompt")
        return Verdict("compliant", (), f"no applicable clause violated ({', '.join(c.id for c in applicable)})")


def rule_prompt_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(m.get("content", "")) for m in prompt)


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """Validate and compile a clause file's text; raise `RulesFileError` with the location of any problem."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RulesFileError(f"{source}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise RulesFileError(f"{source}: top level must be an object")
    _check_keys(data, _TOP_KEYS, source)
    if data.get("version") != 1:
        raise RulesFileError(f"{source}: 'version' must be 1, got {data.get('version')!r}")
    case_sensitive = data.get("case_sensitive", False)
    if not isinstance(case_sensitive, bool):
        raise RulesFileError(f"{source}: 'case_sensitive' must be true or false")
    raw_clauses = data.get("clauses")
    if not isinstance(raw_clauses, list) or not raw_clauses:
        raise RulesFileError(f"{source}: 'clauses' must be a non-empty list")
    flags = 0 if case_sensitive else re.IGNORECASE
    clauses = [_parse_clause(raw, i, flags, source) for i, raw in enumerate(raw_clauses)]
    ids = [c.id for c in clauses]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise RulesFileError(f"{source}: duplicate clause ids {dupes}")
    return RuleSet(tuple(clauses), sha256_text("rules", text))


def _parse_clause(raw: Any, index: int, flags: int, source: str) -> RuleClause:
    where = f"{source}: clauses[{index}]"
    if not isinstance(raw, dict):
        raise RulesFileError(f"{where} must be an object")
    cid = raw.get("id")
    if not isinstance(cid, str) or not cid.strip():
        raise RulesFileError(f"{where}: 'id' must be a non-empty string")
    where = f"{source}: clause {cid!r}"
    _check_keys(raw, _CLAUSE_KEYS, where)
    patterns = {key: _compile_list(raw.get(key, []), key, flags, where) for key in _PATTERN_KEYS}
    if not patterns["violating_if_response"] and not patterns["compliant_only_if_response"]:
        raise RulesFileError(f"{where}: needs 'violating_if_response' or 'compliant_only_if_response' patterns")
    mode = raw.get("when_prompt_mode", "any")
    if mode not in ("any", "all"):
        raise RulesFileError(f"{where}: 'when_prompt_mode' must be 'any' or 'all', got {mode!r}")
    description = raw.get("description", "")
    template = raw.get("compliant_template")
    if not isinstance(description, str):
        raise RulesFileError(f"{where}: 'description' must be a string")
    if template is not None and (not isinstance(template, str) or not template.strip()):
        raise RulesFileError(f"{where}: 'compliant_template' must be a non-empty string")
    return RuleClause(
        id=cid.strip(), description=description, when_prompt=patterns["when_prompt"], when_prompt_all=mode == "all",
        when_prompt_not=patterns["when_prompt_not"], violating_if_response=patterns["violating_if_response"],
        compliant_only_if_response=patterns["compliant_only_if_response"], compliant_template=template,
    )


def _compile_list(raw: Any, key: str, flags: int, where: str) -> tuple[re.Pattern[str], ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise RulesFileError(f"{where}: {key!r} must be a list of regex strings")
    compiled = []
    for p in raw:
        try:
            compiled.append(re.compile(p, flags))
        except re.error as e:
            raise RulesFileError(f"{where}: {key!r}: bad regex {p!r}: {e}") from None
    return tuple(compiled)


def _check_keys(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise RulesFileError(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed)}")


def _desc(c: RuleClause) -> str:
    return f" ({c.description})" if c.description else ""


def _snippet(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n] + "..."


class RulesJudge:
    """`Judge` from a clause file; deterministic, offline, free (usage counts zero calls)."""

    def __init__(self, rules: RuleSet, source: str = "<rules>") -> None:
        self.rules = rules
        self.source = source
        self.judge_id = f"rules:{rules.sha256[:16]}"
        self.template_version = "rules-v1"  # no prompt template; the file hash in judge_id covers the rules
        self.rewrite_template_version = "rules-template-v1"
        self._warnings: dict[str, tuple[str, ...]] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> RulesJudge:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise RulesFileError(f"cannot read rules file {p}: {e.strerror or e}") from None
        return cls(parse_rules(text, str(p)), str(p))

    @classmethod
    def from_text(cls, text: str) -> RulesJudge:
        return cls(parse_rules(text))

    async def judge(self, policy: Policy, prompt: Prompt, response: str) -> JudgeOutcome:
        verdict = self.rules.evaluate(prompt, response)
        return JudgeOutcome(verdict=verdict, usage=Usage(), warnings=self._clause_warnings(policy))

    async def rewrite(self, policy: Policy, prompt: Prompt, violating_response: str) -> JudgeOutcome:
        prompt_text = rule_prompt_text(prompt)
        templates = [c for c in self.rules.clauses if c.applies(prompt_text) and c.compliant_template]
        if not templates:
            return JudgeOutcome(error="rules judge cannot write responses: no applicable clause has a "
                                      "compliant_template", error_kind="permanent")
        text = templates[0].compliant_template or ""
        check = self.rules.evaluate(prompt, text)
        if check.violating:
            return JudgeOutcome(error=f"compliant_template of clause {templates[0].id} violates the rules: "
                                      f"{check.rationale}", error_kind="permanent")
        return JudgeOutcome(text=text, usage=Usage())

    async def aclose(self) -> None:
        return None

    def _clause_warnings(self, policy: Policy) -> tuple[str, ...]:
        """Rule ids the policy does not name (computed once per policy text)."""
        if policy.text not in self._warnings:
            named = {c.id for c in policy.clauses}
            extra = [c.id for c in self.rules.clauses if c.id not in named]
            found = (f"rule clause ids not named in the policy: {extra}",) if named and extra else ()
            self._warnings[policy.text] = found
        return self._warnings[policy.text]
