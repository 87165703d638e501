from __future__ import annotations

import pytest
import torch
from tokenizers import processors

from trace_engine.config import LengthLimits
from trace_engine.tiny_models import DEFAULT_CORPUS, train_tokenizer
from trace_engine.tokenization import (
    PLAIN_TEMPLATE,
    EncodedSequence,
    collate,
    encode_pair,
    encode_pairs,
    encode_sequences,
    pad_id_of,
    tokenize_prompts,
    truncate,
)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(DEFAULT_CORPUS)


def _bos_adding(tokenizer):
    """Make `__call__` prepend BOS, like Llama tokenizers do."""
    bos = tokenizer.bos_token
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    assert tokenizer("hi")["input_ids"][0] == tokenizer.bos_token_id
    return tokenizer


def test_prompt_ids_equal_chat_template_with_generation_prompt(tok):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reset my password?"}]
    ids = tokenize_prompts(tok, ["How do I reset my password?", chat])
    expected_str = tok.apply_chat_template(
        [{"role": "user", "content": "How do I reset my password?"}], add_generation_prompt=True, tokenize=True
    )["input_ids"]
    expected_chat = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert ids == [list(expected_str), list(expected_chat)]
    assert tok.decode(ids[0]).endswith("<|assistant|>\n")


def test_response_is_text_tokens_plus_eos_and_no_double_bos(tok):
    pair = encode_pair(tok, "Is Paris the capital?", "Yes, Paris.", "No.")
    assert list(pair.preferred.response_ids) == [*tok("Yes, Paris.", add_special_tokens=False)["input_ids"], 2]
    assert pair.preferred.response_ids[-1] == tok.eos_token_id
    assert pair.preferred.prompt_ids == pair.dispreferred.prompt_ids
    assert pair.preferred.input_ids.count(tok.bos_token_id) == 1


def test_no_double_bos_when_tokenizer_adds_bos_and_template_has_it():
    tok = _bos_adding(train_tokenizer(DEFAULT_CORPUS))
    [ids] = tokenize_prompts(tok, ["hello"])
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert ids.count(tok.bos_token_id) == 1


def test_plain_template_without_chat_template_gets_one_bos_when_tokenizer_adds_it():
    plain = train_tokenizer(DEFAULT_CORPUS, chat_template=False)
    [ids] = tokenize_prompts(plain, ["What is two plus two?"])
    text = PLAIN_TEMPLATE.format(prompt="What is two plus two?")
    assert ids == plain(text, add_special_tokens=False)["input_ids"]  # this tokenizer adds no BOS
    bos_plain = _bos_adding(train_tokenizer(DEFAULT_CORPUS, chat_template=False))
    [ids] = tokenize_prompts(bos_plain, ["What is two plus two?"])
    assert ids[0] == bos_plain.bos_token_id and ids.count(bos_plain.bos_token_id) == 1
    assert bos_plain.decode(ids, skip_special_tokens=True) == text


def test_truncation_keeps_prompt_end_and_response_start():
    seq = truncate(range(10), range(100, 120), LengthLimits(max_prompt_len=4, max_len=10))
    assert seq.prompt_ids == (6, 7, 8, 9)
    assert seq.response_ids == (100, 101, 102, 103, 104, 105)
    assert seq.prompt_truncated and seq.response_truncated
    untouched = truncate([1, 2], [3, 4], LengthLimits(max_prompt_len=4, max_len=10))
    assert not untouched.prompt_truncated and not untouched.response_truncated


def test_truncation_counts_are_reported(tok):
    long_prompt = " ".join(["firewalls"] * 40)
    seqs, report = encode_sequences(
        tok, [long_prompt, "hi"], ["Sorry, I can't assist with that. " * 10, "ok"], LengthLimits(16, 24)
    )
    assert report.to_dict() == {"sequences": 2, "prompts_truncated": 1, "responses_truncated": 1}
    assert [(s.prompt_truncated, s.response_truncated) for s in seqs] == [(True, True), (False, False)]
    assert len(seqs[0]) == 24 and len(seqs[0].prompt_ids) == 16
    _, pair_report = encode_pairs(tok, ["hi"], ["ok"], ["no"], LengthLimits(64, 128))
    assert pair_report.to_dict() == {"sequences": 2, "prompts_truncated": 0, "responses_truncated": 0}


def test_bad_limits_rejected():
    with pytest.raises(ValueError, match="max_prompt_len < max_len"):
        LengthLimits(max_prompt_len=16, max_len=16)


def test_collate_right_pads_and_masks_responses():
    rows = [EncodedSequence((1, 2), (3, 4, 5)), EncodedSequence((1,), (7,))]
    batch = collate(rows, pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5], [1, 7, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch.response_mask.tolist() == [[False, False, True, True, True], [False, True, False, False, False]]
    assert batch.num_response_tokens.tolist() == [3, 1]
    padded = collate(rows, pad_id=0, pad_to_multiple_of=8)
    assert padded.input_ids.shape == (2, 8) and padded.response_mask.dtype == torch.bool
    assert padded.response_mask[:, 5:].sum() == 0


def test_pad_id_falls_back_to_eos(tok):
    assert pad_id_of(tok) == tok.pad_token_id
    tok2 = train_tokenizer(DEFAULT_CORPUS)
    tok2.pad_token = None
    assert pad_id_of(tok2) == tok2.eos_token_id


def test_length_mismatch_is_an_error(tok):
    with pytest.raises(ValueError, match="lengths differ"):
        encode_pairs(tok, ["a", "b"], ["x"], ["y", "z"])
