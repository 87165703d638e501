from trace_engine.data.pairs import PreferencePair, prompt_as_text, prompt_key, sha256_text


def test_round_trip_keeps_extra_fields():
    row = {"id": 7, "prompt": "p", "chosen": "a", "rejected": "b", "source": "pku", "score": 0.5}
    pair = PreferencePair.from_row(row)
    assert pair.id == "7" and pair.extra == {"source": "pku", "score": 0.5}
    assert pair.to_row() == {**row, "id": "7"}


def test_prompt_key_is_canonical_for_chats():
    a = [{"role": "user", "content": "hi"}]
    b = [{"content": "hi", "role": "user"}]
    assert prompt_key(a) == prompt_key(b)
    assert prompt_key("hi") != prompt_key(a)
    assert prompt_as_text(a) == "user: hi"


def test_sha256_text_is_length_prefixed():
    assert sha256_text("ab", "c") != sha256_text("a", "bc")
    assert sha256_text("x") == sha256_text("x")
