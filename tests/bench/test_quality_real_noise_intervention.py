"""The noise intervention changes exactly the operational rows it names, and nothing else."""

from __future__ import annotations


def _rows(world):  # two operational RETAIN rows, one everyday RETAIN row, one educational INVERT row
    drawn = world.prompts("train", 64, "intervention-probe")
    ops = [p for p in drawn if p.kind == "operational"][:2]
    day = [p for p in drawn if p.kind == "everyday"][:1]
    edu = [p for p in drawn if p.kind == "edu_invert"][:1]
    return [{"id": f"r{i}", "prompt": p.prompt, "category": cat, "chosen": "c", "rejected": "r"}
            for i, (p, cat) in enumerate([(ops[0], "RETAIN"), (ops[1], "RETAIN"), (day[0], "RETAIN"),
                                          (edu[0], "INVERT")])]


def test_undo_restores_only_flipped_operational_rows(intervention) -> None:
    from trace_engine.realworld.world import RealWorld

    world = RealWorld(0)
    clean = _rows(world)
    noisy = [dict(r) for r in clean]
    noisy[0] |= {"category": "INVERT", "noise": {"kind": "category_flip"}}  # operational, flipped: undone
    noisy[1] |= {"chosen": "r", "rejected": "c", "noise": {"kind": "pair_swap"}}  # operational swap: kept
    noisy[2] |= {"category": "INVERT", "noise": {"kind": "category_flip"}}  # everyday flip: kept
    flips = intervention.operational_flips(world, noisy)
    assert flips == [0]
    restored = intervention.undo(noisy, clean, flips)
    assert restored[0] == clean[0] and restored[1:] == noisy[1:]


def test_inject_flips_clean_operational_retain_rows_to_invert(intervention) -> None:
    from trace_engine.realworld.world import RealWorld

    world = RealWorld(0)
    rows = _rows(world)
    out, ids = intervention.inject(world, rows, 2, seed=0)
    assert sorted(ids) == ["r0", "r1"]
    assert [r["category"] for r in out] == ["INVERT", "INVERT", "RETAIN", "INVERT"]
    assert intervention.operational_flips(world, out) == [0, 1]
    assert rows[0]["category"] == "RETAIN"  # the input is not modified
