from __future__ import annotations

import pytest
import torch

from trace_engine.evaluation.generation import LocalBackend, cut_at_stop, left_pad
from trace_engine.tokenization import tokenize_prompts

PROMPTS = [
    "How do I reset my password?",
    "Two plus two?",
    [
        {"role": "system", "content": "Be careful."},
        {"role": "user", "content": "Explain how firewalls work."},
    ],
    "The capital of France is",
    "Sorry",
]


def test_left_pad_puts_tokens_at_the_right_edge():
    ids, mask = left_pad([[5, 6, 7], [9]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_cut_at_stop():
    assert cut_at_stop([4, 5, 2, 0, 0], [2]) == [4, 5]
    assert cut_at_stop([4, 5], [2]) == [4, 5]
    assert cut_at_stop([9, 4], [2, 9]) == []


def test_batched_generation_equals_one_at_a_time(tiny_model, tiny_tokenizer):
    backend = LocalBackend(tiny_model, tiny_tokenizer, batch_size=4)
    batched = backend.generate(PROMPTS, max_new_tokens=10)
    single = [backend.generate([p], max_new_tokens=10, batch_size=1)[0] for p in PROMPTS]
    assert batched == single
    assert any(batched), "a random tiny model still produces some text"
    assert len(set(batched)) > 1


def test_generation_matches_a_manual_greedy_loop(tiny_model, tiny_tokenizer):
    """Greedy decoding = argmax of the model's own next-token logits, from the templated prompt, no double BOS."""
    backend = LocalBackend(tiny_model, tiny_tokenizer)
    (ids,) = tokenize_prompts(tiny_tokenizer, [PROMPTS[0]])
    assert ids[0] == tiny_tokenizer.bos_token_id and ids[1] != tiny_tokenizer.bos_token_id
    row = list(ids)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(8):
            nxt = int(tiny_model(torch.tensor([row])).logits[0, -1].argmax())
            if nxt == tiny_tokenizer.eos_token_id:
                break
            row.append(nxt)
            new.append(nxt)
    expected = tiny_tokenizer.decode(new, skip_special_tokens=True)
    assert backend.generate([PROMPTS[0]], max_new_tokens=8) == [expected]


def test_loglikelihood_equals_manual_sum_of_token_logprobs(tiny_model, tiny_tokenizer):
    backend = LocalBackend(tiny_model, tiny_tokenizer, batch_size=2)
    prompt = "The capital of France is"
    conts = ["Paris.", "four", "Explain how firewalls work"]
    got = backend.loglikelihood(prompt, conts)
    (p_ids,) = tokenize_prompts(tiny_tokenizer, [prompt])
    for cont, score in zip(conts, got, strict=True):
        c_ids = tiny_tokenizer(cont, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(torch.tensor([p_ids + c_ids])).logits[0].double(), dim=-1)
        manual = sum(float(logp[len(p_ids) + j - 1, t]) for j, t in enumerate(c_ids))
        assert score == pytest.approx(manual, abs=1e-4)


def test_bad_inputs_are_refused(tiny_model, tiny_tokenizer):
    backend = LocalBackend(tiny_model, tiny_tokenizer)
    with pytest.raises(ValueError, match="max_new_tokens"):
        backend.generate(["x"], max_new_tokens=0)
    with pytest.raises(ValueError, match="non-empty"):
        backend.loglikelihood("x", ["a", ""])
    assert backend.generate([], max_new_tokens=3) == []


def test_from_pretrained_loads_a_saved_dir(tiny_dir, tiny_model, tiny_tokenizer):
    loaded = LocalBackend.from_pretrained(str(tiny_dir), device="cpu")
    assert loaded.describe()["model"] == str(tiny_dir)
    direct = LocalBackend(tiny_model, tiny_tokenizer)
    assert loaded.generate(PROMPTS[:2], max_new_tokens=5) == direct.generate(PROMPTS[:2], max_new_tokens=5)


def test_adapter_dir_is_applied(tiny_dir, tiny_model, tiny_tokenizer, tmp_path):
    """A saved LoRA adapter with non-zero B changes the model; the loaded backend must score with it."""
    import copy

    from trace_engine.config import LoraSettings
    from trace_engine.modeling import attach_lora

    peft_model = attach_lora(copy.deepcopy(tiny_model), LoraSettings(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    peft_model.save_pretrained(tmp_path / "adapter")
    with_adapter = LocalBackend.from_pretrained(str(tiny_dir), adapter_dir=tmp_path / "adapter", device="cpu")
    in_memory = LocalBackend(peft_model, tiny_tokenizer)
    base = LocalBackend(tiny_model, tiny_tokenizer)
    conts = ["Paris.", "four"]
    assert with_adapter.loglikelihood("Two plus two?", conts) == pytest.approx(
        in_memory.loglikelihood("Two plus two?", conts), abs=1e-5
    )
    assert with_adapter.loglikelihood("Two plus two?", conts) != pytest.approx(
        base.loglikelihood("Two plus two?", conts), abs=1e-3
    )
    assert with_adapter.describe()["adapter"] == str(tmp_path / "adapter")
    with pytest.raises(ValueError, match="not a directory"):
        LocalBackend.from_pretrained(str(tiny_dir), adapter_dir=tmp_path / "missing")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_generation_on_cuda_equals_one_at_a_time(tiny_model, tiny_tokenizer):
    """Device placement of inputs and left padding on GPU (fp32, so batched and single decode identically)."""
    import copy

    backend = LocalBackend(copy.deepcopy(tiny_model).to("cuda"), tiny_tokenizer, batch_size=4)
    batched = backend.generate(PROMPTS, max_new_tokens=10)
    assert batched == [backend.generate([p], max_new_tokens=10, batch_size=1)[0] for p in PROMPTS]
