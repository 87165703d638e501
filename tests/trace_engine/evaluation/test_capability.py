from __future__ import annotations

import copy
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from trace_engine.data.io import DatasetError
from trace_engine.evaluation.capability import (
    LETTERS,
    CapabilitySet,
    MCQuestion,
    extract_letter,
    extract_number,
    letter_prompt,
    load_capability_set,
    pick_by_loglik,
    run_capability,
    score_mc_loglik,
    shuffle_choices,
)
from trace_engine.evaluation.generation import LocalBackend
from trace_engine.tokenization import tokenize_prompts

FIXTURES = Path(__file__).parent / "fixtures"
SHA = "0123456789abcdef0123456789abcdef01234567"


# ---------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("B.", "B"),
        ("(C) Network traffic", "C"),
        ("D) Rome", "D"),
        ("A: Paris", "A"),
        ("The answer is C.", "C"),
        ("Answer: (B)", "B"),
        ("answer: d", None),  # lower-case letters are words, not option letters
        ("I think A is wrong. The answer is D", "D"),
        ("Let me think... so the answer is (A).\nFinal answer: B", "B"),
        ("A good question! It is the second option, (B).", "B"),
        ("A good question, but I am not sure.", None),
        ("The answer is E", None),  # only 4 options
        ("Either (A) or (B).", None),
        ("", None),
    ],
)
def test_extract_letter(text, expected):
    assert extract_letter(text, 4) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3 + 4 = 7\n#### 7", "7"),
        ("The total is $1,050.", "1050"),
        ("#### 1,050", "1050"),
        ("She pays $ 12.50 in total", "12.5"),
        ("It drops to -3 degrees", "-3"),
        ("First 5, then 10, finally 42.", "42"),
        ("#### 18 (because 6*3)", "18"),
        ("The answer is 7.0", "7"),
        ("A year has 1,000,000 seconds? no: 31,536,000", "31536000"),
        ("no numbers here", None),
        ("#### 0.0", "0"),
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == expected


# ---------------------------------------------------------------- shuffling


def test_shuffle_spreads_gold_letters_and_is_seeded_per_question():
    questions = [MCQuestion(f"q{i}", f"question {i}", ("right", "w1", "w2", "w3"), 0) for i in range(200)]
    shuffled = [shuffle_choices(q, seed=0) for q in questions]
    counts = Counter(q.gold_letter for q in shuffled)
    assert set(counts) == set("ABCD")
    assert min(counts.values()) >= 30, counts  # ~50 each; a constant position would put all 200 at one letter
    for q in shuffled:
        assert q.choices[q.answer] == "right" and sorted(q.choices) == sorted(("right", "w1", "w2", "w3"))
    assert [shuffle_choices(q, 0) for q in questions] == shuffled  # deterministic
    assert [shuffle_choices(q, 1) for q in questions] != shuffled  # the seed matters
    # the order depends on the question id, not on its position in the list
    assert shuffle_choices(questions[5], 0) == shuffled[5]


# ---------------------------------------------------------------- loading


def test_load_local_fixtures():
    mmlu = load_capability_set("mmlu", FIXTURES / "mmlu.jsonl")
    assert mmlu.kind == "mc" and len(mmlu.items) == 4
    assert mmlu.items[1] == MCQuestion(
        "mmlu-math-1", "What is two plus two?", ("three", "four", "five", "six"), 1
    )
    hs = load_capability_set("hellaswag", FIXTURES / "hellaswag.jsonl")
    assert hs.items[0].question == "A man opens his laptop. He" and hs.items[0].id == "101"
    assert hs.items[1].answer == 2
    gpqa = load_capability_set("gpqa", FIXTURES / "gpqa.jsonl")
    assert gpqa.items[0].choices[gpqa.items[0].answer] == "Photon"
    gsm = load_capability_set("gsm8k", FIXTURES / "gsm8k.jsonl", limit=2)
    assert [q.answer for q in gsm.items] == ["7", "1050"]


def test_load_rejects_bad_rows(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 5}\n')
    with pytest.raises(DatasetError, match="row 1: .*out of range"):
        load_capability_set("mmlu", bad)
    bad.write_text('{"question": "q", "answer": "no number"}\n')
    with pytest.raises(DatasetError, match="no number"):
        load_capability_set("gsm8k", bad)
    with pytest.raises(ValueError, match="unknown capability format"):
        load_capability_set("trivia", bad)


def test_hub_reference_must_be_pinned_and_loads_through_datasets(tmp_path):
    folder = tmp_path / "gsm8k_repo"
    folder.mkdir()
    (folder / "test.jsonl").write_text((FIXTURES / "gsm8k.jsonl").read_text())
    with pytest.raises(DatasetError, match="no revision"):
        load_capability_set("gsm8k", f"hf://{folder}:test")
    loaded = load_capability_set("gsm8k", f"hf://{folder}@{SHA}:test", cache_dir=str(tmp_path / "cache"))
    assert [q.answer for q in loaded.items] == ["7", "1050", "4.5"]
    assert loaded.source["revision"] == SHA and loaded.source["split"] == "test"


# ---------------------------------------------------------------- scoring


def test_pick_by_loglik_sum_and_length_normalised():
    # option 0 has the best total, option 1 the best per byte
    assert pick_by_loglik([-4.0, -6.0, -9.0], ["ab", "abcdefghijkl", "abc"]) == (0, 1)
    assert pick_by_loglik([-1.0, -1.0], ["x", "y"]) == (0, 0)


def test_mc_loglik_on_a_tiny_model_matches_manual_logits(tiny_model, tiny_tokenizer):
    """Bias the output layer toward the tokens of one option: that option must win, and every score must equal
    the sum of log-softmax values computed by hand from the model's logits."""
    model = copy.deepcopy(tiny_model)
    favoured = "Paris"
    ids = tiny_tokenizer(favoured, add_special_tokens=False)["input_ids"]
    head = model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[ids] = 12.0
    model.lm_head = biased
    backend = LocalBackend(model, tiny_tokenizer)
    question = MCQuestion("geo", "What is the capital of France?", ("Berlin", favoured, "Madrid", "Rome"), 1)
    metrics, records = score_mc_loglik(backend, CapabilitySet("geo", "mc", [question]), seed=0)
    assert metrics["geo/acc"].value == 1.0 and metrics["geo/acc_norm"].value == 1.0
    (record,) = records
    shuffled = shuffle_choices(question, 0)
    (prompt_ids,) = tokenize_prompts(tiny_tokenizer, [question.question])
    for choice, score in zip(shuffled.choices, record["scores"], strict=True):
        c_ids = tiny_tokenizer(choice, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([prompt_ids + c_ids])).logits[0].double(), -1)
        manual = sum(float(logp[len(prompt_ids) + j - 1, t]) for j, t in enumerate(c_ids))
        assert score == pytest.approx(manual, abs=1e-4)
    assert record["pred"] == record["gold"] == LETTERS[shuffled.answer]


class KnowsTheAnswers:
    """A test backend: for a lettered question it names the letter of the known right answer; for a math
    question it writes a worked answer ending in the known number (formatted with $ and commas)."""

    def __init__(self, right: dict[str, str], numbers: dict[str, str], wrong: bool = False) -> None:
        self.right, self.numbers, self.wrong = right, numbers, wrong

    def generate(self, prompts, max_new_tokens=256, *, batch_size=None):
        out = []
        for p in prompts:
            options = dict(re.findall(r"^([A-J])\. (.*)$", p, flags=re.M))
            if options:
                letter = next(k for k, v in options.items() if v in self.right.values())
                out.append("A" if self.wrong else f"The answer is ({letter}).")
            else:
                q = next(k for k in self.numbers if k in p)
                out.append(f"Working... 2 + 2 = 4.\n#### ${self.numbers[q]}")
        return out

    def loglikelihood(self, prompt, continuations):
        return [0.0 if c in self.right.values() else -5.0 for c in continuations]

    def describe(self):
        return {"backend": "test"}


def test_letter_and_numeric_modes_end_to_end():
    mmlu = load_capability_set("mmlu", FIXTURES / "mmlu.jsonl")
    gsm = load_capability_set("gsm8k", FIXTURES / "gsm8k.jsonl")
    right = {q.id: q.choices[q.answer] for q in mmlu.items}
    numbers = {"Tom has 3 apples": "7", "A bike costs": "1,050", "Half of 9": "4.50"}
    result = run_capability(KnowsTheAnswers(right, numbers), [mmlu, gsm], mc_mode="letter")
    assert result.metrics["mmlu/acc_letter"].value == 1.0
    assert result.metrics["gsm8k/acc"].value == 1.0
    always_a = run_capability(KnowsTheAnswers(right, numbers, wrong=True), [mmlu], mc_mode="letter")
    golds = [r["gold"] for r in always_a.records]
    assert always_a.metrics["mmlu/acc_letter"].value == golds.count("A") / len(golds) < 1.0
    loglik = run_capability(KnowsTheAnswers(right, numbers), [mmlu], mc_mode="loglik")
    assert loglik.metrics["mmlu/acc"].value == 1.0 and loglik.info["mc_mode"] == "loglik"


def test_letter_prompt_lists_options():
    q = MCQuestion("x", "Pick one", ("alpha", "beta"), 0)
    assert "A. alpha\nB. beta" in letter_prompt(q) and "(A, B)" in letter_prompt(q)
