"""Gold batch (Algorithm 2): sizes, seeding, compliant responses from other prompts, oracle rewrites."""

from __future__ import annotations

import random

import pytest

from trace_engine.data.pairs import prompt_key
from trace_engine.gold import INVERT, ORACLE, PUNISH, RETAIN, build_gold_batch


def rows(n_retain: int, n_invert: int, n_punish: int, oracle_every: int = 0) -> list[dict]:
    out: list[dict] = []
    for i in range(n_retain):
        out.append({"id": f"r{i}", "category": RETAIN, "prompt": f"pr{i}", "chosen": f"ok-r{i}", "rejected": f"x-r{i}"})
    for i in range(n_invert):  # already swapped: chosen is the compliant (old rejected) text
        out.append({"id": f"i{i}", "category": INVERT, "prompt": f"pi{i}", "chosen": f"ok-i{i}", "rejected": f"bad-i{i}"})
    for i in range(n_punish):
        row = {"id": f"p{i}", "category": PUNISH, "prompt": f"pp{i}", "chosen": f"bad-w{i}", "rejected": f"bad-l{i}"}
        if oracle_every and i % oracle_every == 0:
            row["oracle_response"] = f"fixed-{i}"
        out.append(row)
    out.append({"id": "e0", "category": "ERROR", "prompt": "pe", "chosen": "?", "rejected": "?"})
    return out


def test_sizes_follow_the_thirds_and_punish_fills_the_rest():
    gold, report = build_gold_batch(rows(10, 10, 10), size=12, seed=0)
    cats = [g.category for g in gold]
    assert cats.count(RETAIN) == 4 and cats.count(INVERT) == 4 and cats.count(PUNISH) == 4
    assert report.size == len(gold) == 12 and report.requested == 12
    assert all(g.source_id != "e0" for g in gold)  # ERROR rows never enter


def test_short_categories_shrink_the_batch_and_say_so():
    gold, report = build_gold_batch(rows(1, 2, 3), size=30, seed=0)
    assert (report.retain, report.invert, report.punish) == (1, 2, 3)
    assert len(gold) == 6
    # Small categories: RETAIN/INVERT are capped at B/3, PUNISH takes up the slack.
    gold, report = build_gold_batch(rows(10, 0, 10), size=9, seed=0)
    assert (report.retain, report.invert, report.punish) == (3, 0, 6)


def test_seeded_and_independent_of_the_global_rng():
    data = rows(20, 20, 20)
    random.seed(1)
    a, _ = build_gold_batch(data, size=15, seed=42)
    random.seed(999)
    b, _ = build_gold_batch(data, size=15, seed=42)
    c, _ = build_gold_batch(data, size=15, seed=43)
    assert a == b
    assert a != c
    state = random.getstate()
    build_gold_batch(data, size=15, seed=42)
    assert random.getstate() == state


def test_pairs_keep_their_orientation():
    gold, _ = build_gold_batch(rows(5, 5, 5), size=9, seed=3)
    for g in gold:
        if g.category in (RETAIN, INVERT):
            assert g.chosen.startswith("ok-") and g.compliant_source is None
        else:  # PUNISH: (x, compliant, y_w) with y_w = the violating chosen
            assert g.rejected.startswith("bad-w") and g.chosen.startswith("ok-")


def test_punish_compliant_response_comes_from_another_prompt():
    data = rows(3, 3, 40)
    # Make one RETAIN pair share its prompt with every PUNISH pair: its response must never be drawn for them.
    data[0]["prompt"] = "shared"
    for r in data:
        if r["category"] == PUNISH:
            r["prompt"] = "shared"
    pool_prompt = {r["chosen"]: prompt_key(r["prompt"]) for r in data if r["category"] in (RETAIN, INVERT)}
    for seed in range(5):
        gold, report = build_gold_batch(data, size=30, seed=seed)
        punish = [g for g in gold if g.category == PUNISH]
        assert punish and report.punish_skipped_no_compliant == 0
        for g in punish:
            assert pool_prompt[g.chosen] != prompt_key(g.prompt)
            assert g.compliant_source != "r0"


def test_oracle_rewrite_is_used_when_present_and_empty_ones_are_not():
    data = rows(3, 3, 6, oracle_every=2)  # p0, p2, p4 have oracle rewrites
    data[-2]["oracle_response"] = "   "  # p5: a failed oracle call, never a preferred answer
    gold, report = build_gold_batch(data, size=12, seed=0)
    punish = {g.source_id: g for g in gold if g.category == PUNISH}
    assert set(punish) == {f"p{i}" for i in range(6)}
    for i in (0, 2, 4):
        assert punish[f"p{i}"].chosen == f"fixed-{i}" and punish[f"p{i}"].compliant_source == ORACLE
    for i in (1, 3, 5):
        assert punish[f"p{i}"].chosen.startswith("ok-") and punish[f"p{i}"].compliant_source != ORACLE
    assert report.punish_with_oracle == 3


def test_oracle_rewrite_serves_every_pair_of_that_prompt():
    data = rows(0, 0, 2)
    data[0]["oracle_response"] = "rewrite"
    data[1]["prompt"] = data[0]["prompt"]  # same prompt, no own rewrite, and no pool at all
    gold, report = build_gold_batch(data, size=3, seed=0)
    assert [g.chosen for g in gold] == ["rewrite", "rewrite"]
    assert report.punish_skipped_no_compliant == 0


def test_punish_without_any_compliant_response_is_skipped_and_counted():
    data = rows(0, 0, 4)
    gold, report = build_gold_batch(data, size=6, seed=0)
    assert gold == [] and report.punish_skipped_no_compliant == 4 and report.punish == 0


def test_bad_size_is_refused():
    with pytest.raises(ValueError, match="size"):
        build_gold_batch(rows(1, 1, 1), size=0, seed=0)


def test_gold_candidates_trusted_rows_only_and_auto_fallback():
    from trace_engine.gold import gold_candidates

    data = rows(4, 4, 4)
    data[0]["trusted"] = True
    data[5]["trusted"] = True
    data[6]["trusted"] = "true"  # a string is not a JSON true: not trusted
    assert [r["id"] for r in gold_candidates(data, "trusted")] == ["r0", "i1"]
    assert [r["id"] for r in gold_candidates(data, "auto")] == ["r0", "i1"]
    assert len(gold_candidates(data, "all")) == len(data)
    untrusted = rows(2, 2, 2)
    assert gold_candidates(untrusted, "auto") == untrusted
    with pytest.raises(ValueError, match="none is"):
        gold_candidates(untrusted, "trusted")
    with pytest.raises(ValueError, match="gold source"):
        gold_candidates(untrusted, "verified")


def test_gold_batch_from_trusted_rows_never_contains_an_untrusted_pair():
    from trace_engine.gold import gold_candidates

    data = rows(9, 9, 9)
    for r in data[::3]:
        r["trusted"] = True
    trusted = {r["id"] for r in data if r.get("trusted") is True}
    gold, report = build_gold_batch(gold_candidates(data, "trusted"), size=9, seed=1)
    assert report.size == len(gold) > 0
    assert {g.source_id for g in gold if g.category != PUNISH} <= trusted
    assert {g.source_id for g in gold if g.category == PUNISH} <= trusted
