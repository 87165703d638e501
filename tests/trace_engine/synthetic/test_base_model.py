"""The synthetic base model: recipe-hash cache (hit, miss, atomic), response-only loss, batched greedy generation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trace_engine.synthetic import base_model as bm
from trace_engine.synthetic.base_model import (
    BaseModelRecipe,
    ensure_base_model,
    generate_greedy,
    response_nll,
)
from trace_engine.synthetic.world import make_world
from trace_engine.tokenization import collate, encode_sequences, pad_id_of

TINY = BaseModelRecipe(sft_pairs=40, retention_repeats=1, vocab_size=400, hidden_size=32, num_layers=1,
                       num_heads=2, num_kv_heads=1, intermediate_size=64, steps=3, batch_size=8, warmup_steps=1)


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bm.BaseModel]:
    root = tmp_path_factory.mktemp("cache")
    return root, ensure_base_model(TINY, root)


def test_first_call_trains_and_writes_a_complete_model_folder(cached) -> None:
    root, base = cached
    assert base.trained_now and base.path.parent == root
    assert (base.path / bm.COMPLETE_MARKER).is_file() and list(base.path.glob("*.safetensors"))
    assert base.metrics["steps"] == 3 and base.metrics["examples"] > 40
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]


def test_second_call_is_a_cache_hit(cached) -> None:
    root, base = cached
    again = ensure_base_model(TINY, root)
    assert not again.trained_now and again.path == base.path and again.metrics == base.metrics


def test_any_recipe_change_is_a_different_model(cached, monkeypatch: pytest.MonkeyPatch) -> None:
    root, base = cached
    for changed in (BaseModelRecipe(**{**TINY.__dict__, "steps": 4}), BaseModelRecipe(**{**TINY.__dict__, "lr": 1e-3}),
                    BaseModelRecipe(**{**TINY.__dict__, "world_seed": 1}),
                    BaseModelRecipe(**{**TINY.__dict__, "arch": "qwen2"})):
        assert changed.key() != TINY.key()
    monkeypatch.setattr(bm, "world_fingerprint", lambda: "edited world")
    assert TINY.key() != base.path.name.removeprefix("base-")


def test_default_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REALIGN_CACHE_DIR", str(tmp_path))
    assert bm.default_cache_dir() == tmp_path / "synthetic"
    monkeypatch.delenv("REALIGN_CACHE_DIR")
    assert bm.default_cache_dir() == Path.home() / ".cache" / "realign" / "synthetic"


def test_a_crash_while_training_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(recipe, log=None):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(bm, "train_base_model", boom)
    with pytest.raises(RuntimeError, match="out of memory"):
        ensure_base_model(TINY, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_incomplete_leftover_folder_is_replaced(tmp_path: Path, cached) -> None:
    _, base = cached
    leftover = tmp_path / base.path.name
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")  # no COMPLETE marker: a crash after a partial copy
    rebuilt = ensure_base_model(TINY, tmp_path)
    assert rebuilt.trained_now and (rebuilt.path / bm.COMPLETE_MARKER).is_file()


def test_loss_is_the_mean_nll_of_response_tokens_only(cached) -> None:
    _, base = cached
    model, tokenizer = base.load()
    rows = make_world(0).sft_examples(4)[:4]
    encoded, _ = encode_sequences(tokenizer, [p for p, _ in rows], [r for _, r in rows])
    batch = collate(encoded, pad_id_of(tokenizer))
    labels = batch.input_ids.masked_fill(~batch.response_mask, -100)
    with torch.no_grad():
        reference = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
        ours = response_nll(model, batch)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_batched_left_padded_generation_equals_one_at_a_time(cached) -> None:
    _, base = cached
    model, tokenizer = base.load()
    prompts = ["Hi.", *[t.prompt for t in make_world(0).test_prompts(3)]]
    batched = generate_greedy(model, tokenizer, prompts, max_new_tokens=6)
    single = [generate_greedy(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single and len(batched) == 4


def test_response_style_reads_the_markers_of_every_rendered_style() -> None:
    from trace_engine.synthetic import policies as pol
    from trace_engine.synthetic.vocab import TOPICS
    from trace_engine.synthetic.world import PromptSpace, render_response, style_variants

    for topic in TOPICS:
        slot = PromptSpace(topic, "train").get(0).slot
        for style in pol.STYLES:
            for variant in range(style_variants(topic, style)):
                assert bm.response_style(render_response(topic, slot, style, variant)) == style


def test_evaluation_reports_shares_for_a_model(cached) -> None:
    _, base = cached
    model, tokenizer = base.load()
    report = bm.evaluate_model(model, tokenizer, make_world(0), n_test=6, n_retention=4, n_asr=3, n_over_refusal=3,
                               max_new_tokens=4)
    for key in ("old_compliance", "tpa_new", "retention_accuracy", "asr_new", "over_refusal"):
        assert 0.0 <= report[key] <= 1.0, key
    assert report["n_test"] == 6 and set(report["tpa_new_by_category"]) <= {"INVERT", "PUNISH", "RETAIN"}


def test_a_first_run_reports_progress_with_an_eta_and_a_cache_hit_is_quiet(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`make demo` on a fresh machine trains this model for minutes: it must say so, with progress (issue 13)."""
    recipe = BaseModelRecipe(**{**TINY.__dict__, "steps": 4})
    ensure_base_model(recipe, tmp_path)  # the default sink: stderr
    err = capsys.readouterr().err.splitlines()
    assert "not cached yet, training it once (4 steps" in err[0]
    assert any("step 1/4 loss" in line and "ETA" in line for line in err)
    assert any("step 4/4 loss" in line and "ETA 0s" in line for line in err)
    assert "trained in" in err[-1] and str(tmp_path) in err[-1]
    ensure_base_model(recipe, tmp_path)
    assert capsys.readouterr().err == ""


def test_progress_lines_come_at_least_every_interval() -> None:
    lines: list[str] = []
    bm.train_base_model(BaseModelRecipe(**{**TINY.__dict__, "steps": 5}), log=lines.append, every_s=0.0)
    assert [line.split(" loss")[0] for line in lines] == [f"synthetic base model: step {i}/5" for i in range(1, 6)]
    quiet: list[str] = []
    bm.train_base_model(BaseModelRecipe(**{**TINY.__dict__, "steps": 5}), log=quiet.append, every_s=3600.0)
    assert len(quiet) == 2  # first and last step only
