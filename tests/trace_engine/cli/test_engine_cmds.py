"""`realign score / train / merge` on a tiny local model: in-process, plus one real subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trace_engine import modeling
from trace_engine import train as train_module
from trace_engine.cli import main
from trace_engine.cli.engine_cmds import SCORE_META, SCORED_FILE
from trace_engine.reference_cache import REFERENCE_CACHE, load_reference_cache, sequence_key
from trace_engine.tiny_models import DEFAULT_CORPUS, build_tiny_model, save_tiny, train_tokenizer

REPO = Path(__file__).resolve().parents[3]
SMALL = ["--lora-r", "4", "--lora-alpha", "8", "--max-prompt-len", "48", "--max-len", "96", "--device", "cpu"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    tok = train_tokenizer(DEFAULT_CORPUS, vocab_size=300)
    model = build_tiny_model(tok, "llama", hidden_size=32, intermediate_size=64)
    return save_tiny(model, tok, tmp_path_factory.mktemp("model"))


def triaged_rows(n: int = 9) -> list[dict]:
    rows = []
    for i in range(n):
        category = ("INVERT", "PUNISH", "RETAIN")[i % 3]
        rows.append({
            "id": f"r{i}", "category": category, "prompt": f"How do I reset my password, case {i}?",
            "chosen": "Open settings and choose reset." if category != "PUNISH" else "Sorry, I can't assist.",
            "rejected": f"I cannot help with that {i}." if category != "PUNISH" else "Two plus two is four.",
            "original_chosen": "x", "original_rejected": f"I cannot help with that {i}.",
        })
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def scored_dir(model_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("score")
    triaged = write_rows(tmp / "triaged.jsonl", triaged_rows())
    out = tmp / "out"
    code = main(["score", "--triaged", str(triaged), "--model", str(model_dir), "--variant", "trace", "--out",
                 str(out), "--gold-size", "6", "--seed", "5", *SMALL])
    assert code == 0
    return out


def test_score_writes_scores_summary_and_reference_cache(scored_dir):
    rows = [json.loads(line) for line in (scored_dir / SCORED_FILE).read_text().splitlines()]
    conflict = [r for r in rows if r["category"] in ("INVERT", "PUNISH")]
    assert len(rows) == 9 and len(conflict) == 6
    assert all(isinstance(r["impact_score"], float) and r["impact_score"] >= 0 for r in conflict)
    assert sum(r["impact_score"] for r in conflict) == pytest.approx(1.0)  # --normalise sum
    assert all(r["impact_score"] is None for r in rows if r["category"] == "RETAIN")
    summary = json.loads((scored_dir / "scored.summary.json").read_text())
    assert summary["n_scored"] == 6 and "share_clamped_to_zero" in summary
    cache, meta = load_reference_cache(scored_dir / REFERENCE_CACHE)
    assert meta["max_len"] == 96 and meta["dtype"] == "float32"
    expected = {sequence_key(r["prompt"], r[side]) for r in conflict for side in ("chosen", "rejected")}
    assert set(cache) == expected and all(v < 0 for v in cache.values())
    settings = json.loads((scored_dir / SCORE_META).read_text())["settings"]
    assert settings["seed"] == 5 and settings["target_modules"] == ["q_proj", "v_proj"]


def test_train_from_scored_rows_writes_adapter_dir_then_merge(scored_dir, model_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    computed: list[int] = []
    original = train_module.reference_sequence_logps

    def counting(model, encoded, examples, rt, cfg, pad_id, cache=None):
        computed.append(sum(1 for e in examples for t in (e.preferred, e.dispreferred)
                            if e.kind != train_module.LossKind.KL and sequence_key(e.prompt, t) not in (cache or {})))
        return original(model, encoded, examples, rt, cfg, pad_id, cache)

    monkeypatch.setattr(train_module, "reference_sequence_logps", counting)
    code = main(["train", "--scored", str(scored_dir / SCORED_FILE), "--model", str(model_dir), "--variant", "trace",
                 "--out", str(run), "--max-steps", "2", "--batch-size", "3", "--seed", "5", *SMALL])
    assert code == 0
    assert computed == [0]  # every conflict row's reference log-prob came from the scoring cache
    adapter = run / "adapter"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "realign.json"):
        assert (adapter / name).is_file(), name
    provenance = json.loads((adapter / "realign.json").read_text())
    assert provenance["base_model"]["name_or_path"] == str(model_dir) and provenance["steps"] == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2

    merged = tmp_path / "merged"
    assert main(["merge", "--adapter", str(adapter), "--out", str(merged)]) == 0
    weights = load_file(merged / "model.safetensors")
    base = load_file(model_dir / "model.safetensors")
    q = next(k for k in weights if k.endswith("q_proj.weight"))
    assert not torch.equal(weights[q], base[q])  # the adapter's update is in the merged weights


def test_train_from_triaged_scores_first_and_resumes(model_dir, tmp_path):
    triaged = write_rows(tmp_path / "triaged.jsonl", triaged_rows())
    argv = ["train", "--triaged", str(triaged), "--model", str(model_dir), "--variant", "trace", "--out",
            str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "3", "--checkpoint-every", "1",
            "--gold-size", "6", *SMALL]
    assert main(argv) == 0
    scoring = tmp_path / "run" / "scoring"
    assert (scoring / SCORED_FILE).is_file() and (scoring / REFERENCE_CACHE).is_file()
    stamp = (scoring / SCORE_META).stat().st_mtime_ns
    first = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    assert main(argv) == 0  # same command again: scores reused, training resumes at its last checkpoint
    assert (scoring / SCORE_META).stat().st_mtime_ns == stamp
    second = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def run_cli(argv: list[str]) -> int:
    """main(argv), with argparse's SystemExit turned into its exit code."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def make_categories_unknown(rows):
    rows[0]["category"] = "MAYBE"


def make_conflict_set_empty(rows):
    for r in rows:
        r["category"] = "RETAIN"


def keep(rows):
    return None


@pytest.mark.parametrize(
    ("command", "mutate", "extra", "message"),
    [
        ("score", make_categories_unknown, [], "unknown category 'MAYBE'"),
        ("train", make_categories_unknown, [], "unknown category 'MAYBE'"),
        ("score", make_conflict_set_empty, [], "empty conflict set"),
        ("train", make_conflict_set_empty, [], "empty conflict set"),
        ("score", keep, ["--target-modules", "c_attn"], r"\['c_attn'\].*available"),
        ("train", keep, ["--target-modules", "c_attn"], r"\['c_attn'\].*available"),
        ("train", keep, ["--variant", "sft"], "invalid choice: 'sft'"),
        ("score", keep, ["--variant", "dpo"], "invalid choice: 'dpo'"),
        ("train", keep, ["--pref-loss", "rdpo"], "impact scores support"),
        ("train", keep, ["--scored-input"], "no numeric impact_score"),  # scored file without scores
        ("score", keep, ["--weight-cap", "0.5"], "--weight-cap must be 0"),
        ("train", keep, ["--weight-cap", "inf"], "--weight-cap must be 0"),
        ("score", keep, ["--uniform-mix", "1.5"], r"--uniform-mix must be in \[0, 1\]"),
        ("score", keep, ["--gold-from", "trusted"], 'needs rows marked "trusted": true'),
        ("train", keep, ["--gold-from", "verified"], "invalid choice: 'verified'"),
    ],
)
def test_bad_input_is_one_line_exit_2_before_any_model_load(command, mutate, extra, message, model_dir, tmp_path,
                                                             monkeypatch, capsys):
    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(modeling, "load_causal_lm", no_load)
    monkeypatch.setattr(train_module, "load_causal_lm", no_load)
    data = triaged_rows()
    mutate(data)
    path = str(write_rows(tmp_path / "t.jsonl", data))
    source = ["--scored", path] if "--scored-input" in extra else ["--triaged", path]
    extra = [x for x in extra if x != "--scored-input"]
    variant = [] if "--variant" in extra else ["--variant", "trace"]
    argv = [command, *source, "--model", str(model_dir), "--out", str(tmp_path / "o"), "--gold-size", "6", *SMALL]
    code = run_cli(argv + variant + extra)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not (tmp_path / "o" / "adapter").exists()


def test_missing_file_and_hub_model_without_revision(model_dir, tmp_path, capsys):
    assert main(["score", "--triaged", str(tmp_path / "nope.jsonl"), "--model", str(model_dir), "--variant",
                 "trace", "--out", str(tmp_path / "o")]) == 2
    triaged = write_rows(tmp_path / "t.jsonl", triaged_rows())
    assert main(["train", "--triaged", str(triaged), "--model", "org/some-model", "--variant", "no_impact",
                 "--out", str(tmp_path / "o")]) == 2
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(triaged_rows()[0]) + "\n{not json\n")
    assert main(["score", "--triaged", str(broken), "--model", str(model_dir), "--variant", "trace",
                 "--out", str(tmp_path / "o")]) == 2
    assert main(["merge", "--adapter", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4
    assert "does not exist" in err[0] and "pinned revision" in err[1]
    assert "broken.jsonl row 2: invalid JSON" in err[2] and "not an adapter directory" in err[3]


def test_score_as_a_subprocess(model_dir, tmp_path):
    triaged = write_rows(tmp_path / "triaged.jsonl", triaged_rows())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "trace_engine.cli", "score", "--triaged", str(triaged), "--model", str(model_dir),
         "--variant", "no_triage", "--out", str(tmp_path / "out"), "--gold-size", "6", "--normalise", "mean",
         *SMALL],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "scored 9 samples (no_triage)" in done.stdout
    rows = [json.loads(line) for line in (tmp_path / "out" / SCORED_FILE).read_text().splitlines()]
    assert sum(r["impact_score"] for r in rows) == pytest.approx(9.0)  # --normalise mean: weights average 1


def test_cli_weight_cap_default_is_the_library_default():
    from trace_engine.cli.engine_cmds import DEFAULT_WEIGHT_CAP
    from trace_engine.scoring import DEFAULT_SHAPING
    from trace_engine.scoring import DEFAULT_WEIGHT_CAP as LIBRARY_DEFAULT

    assert DEFAULT_WEIGHT_CAP == LIBRARY_DEFAULT == DEFAULT_SHAPING.cap
    assert DEFAULT_SHAPING.check_anchors is True  # chosen on validation (config.DEFAULT_CHECK_ANCHORS)


def test_anchor_check_is_on_by_default_and_can_be_turned_off(model_dir, tmp_path):
    """Without a flag every RETAIN row gets an anchor weight; --no-check-anchors anchors every RETAIN pair as
    published (no anchor weight on any row)."""
    triaged = write_rows(tmp_path / "t.jsonl", triaged_rows())
    for flags, checked in (([], True), (["--no-check-anchors"], False)):
        out = tmp_path / ("on" if checked else "off")
        assert main(["score", "--triaged", str(triaged), "--model", str(model_dir), "--variant", "trace", "--out",
                     str(out), "--gold-size", "6", *flags, *SMALL]) == 0
        retain = [r for r in (json.loads(x) for x in (out / SCORED_FILE).read_text().splitlines())
                  if r["category"] == "RETAIN"]
        assert retain and all(("anchor_weight" in r) is checked for r in retain)
        assert json.loads((out / SCORE_META).read_text())["settings"]["check_anchors"] is checked


def test_score_options_reach_the_weights(model_dir, tmp_path):
    """--weight-cap 0 (published) sums to 1; --uniform-mix 1 gives uniform weights; settings record both."""
    data = triaged_rows()
    data[0]["trusted"] = data[1]["trusted"] = data[2]["trusted"] = True
    triaged = write_rows(tmp_path / "t.jsonl", data)
    out = tmp_path / "mix"
    assert main(["score", "--triaged", str(triaged), "--model", str(model_dir), "--variant", "trace", "--out", str(out),
                 "--gold-size", "6", "--uniform-mix", "1", "--weight-cap", "0", "--gold-from", "trusted", *SMALL]) == 0
    rows = [json.loads(line) for line in (out / SCORED_FILE).read_text().splitlines()]
    weights = [r["impact_score"] for r in rows if r["category"] != "RETAIN"]
    assert weights == pytest.approx([1 / 6] * 6)
    meta = json.loads((out / SCORE_META).read_text())
    assert meta["settings"]["weight_cap"] is None and meta["settings"]["uniform_mix"] == 1.0
    assert meta["settings"]["gold_from"] == "trusted" and meta["summary"]["gold"]["size"] <= 3


def test_gate_and_anchor_check_flags_reach_the_weights(model_dir, tmp_path):
    """--gate-weights leaves only 0 or the uniform weight; --check-anchors gives every RETAIN row an anchor weight."""
    triaged = write_rows(tmp_path / "t.jsonl", triaged_rows())
    out = tmp_path / "gate"
    assert main(["score", "--triaged", str(triaged), "--model", str(model_dir), "--variant", "trace", "--out", str(out),
                 "--gold-size", "6", "--normalise", "mean", "--gate-weights", "--check-anchors", *SMALL]) == 0
    rows = [json.loads(line) for line in (out / SCORED_FILE).read_text().splitlines()]
    assert {r["impact_score"] for r in rows if r["category"] != "RETAIN"} <= {0.0, 1.0}
    retain = [r for r in rows if r["category"] == "RETAIN"]
    assert retain and all(r["anchor_weight"] in (0.0, 1.0) for r in retain)
    meta = json.loads((out / SCORE_META).read_text())
    assert meta["settings"]["gate_weights"] is True and meta["settings"]["check_anchors"] is True
    assert meta["summary"]["shaping"]["gate"] is True and meta["summary"]["anchors"]["checked"] == len(retain)
