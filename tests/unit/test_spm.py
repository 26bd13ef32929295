"""SentencePiece vocabularies from GGUF (lm/spm.py through lm.tokenizer.Tokenizer.from_gguf), against the
`sentencepiece` library itself on a tiny BPE model it trained; chat-template stop tokens, BOS, the fallback's
stop string, and Llama 3's BPE."""

from __future__ import annotations

import pytest

from lm.engine import Decoder, GenerationConfig
from lm.tokenizer import Tokenizer
from tests.support.spm_vocab import spm_from_gguf, spm_metadata, train_spm
from tests.support.tiny_gguf import tiny_metadata

TEXTS = [
    "Hello world!", "The quick brown fox jumps over the lazy dog.", "  two  spaces\n\nand newlines", " leading",
    "trailing ", "a\tb\t\tc", "12345 and 3.14159", "Café, naïve, résumé — 日本語, 中文, 한국어", "emoji 😀👍🏽 here",
    "Ünïcödé Grüße aus Köln, ça va? Señor, mañana.", "def add(a, b):\n    return a + b\n", "x" * 40, "",
    "\n\n\n", "   \t  \n  ", "Ελληνικά και русский текст, עברית, العربية", "C:\\path\\to\\file.txt", "a   b    c",
]


@pytest.fixture(scope="module", params=[True, False], ids=["space_prefix", "no_prefix"])
def spm(request):
    prefix = request.param
    sp = train_spm(add_dummy_prefix=prefix)
    return sp, spm_metadata(sp, prefix), prefix


def test_ids_equal_sentencepiece(spm):
    sp, meta, _ = spm
    tok = Tokenizer.from_gguf(meta)
    assert tok.vocab_size == sp.get_piece_size()
    for text in TEXTS:
        assert tok.encode(text) == sp.encode(text), text
        assert tok.decode(tok.encode(text)) == text
    # the model really merges and really falls back to bytes (else agreement would be trivial)
    assert len(tok.encode("The quick brown fox")) < len("The quick brown fox")
    assert [sp.is_byte(i) for i in tok.encode("ꙮ")][-3:] == [True] * 3 and sp.encode("ꙮ") == tok.encode("ꙮ")
    # and a SentencePiece model rebuilt from the GGUF tables is the same tokenizer (the real-file test uses it)
    again = spm_from_gguf(meta)
    assert all(again.encode(t) == sp.encode(t) for t in TEXTS)


def test_special_pieces_and_bos(spm):
    sp, meta, prefix = spm
    tok = Tokenizer.from_gguf(meta)
    start, end = sp.piece_to_id("<start_of_turn>"), sp.piece_to_id("<end_of_turn>")
    ids = tok.encode("<start_of_turn>user\nhi<end_of_turn>")
    assert ids[0] == start and ids[-1] == end and ids.count(start) == 1
    # each run of text between special tokens is encoded as SentencePiece encodes it alone (llama.cpp's way)
    assert ids[1:-1] == sp.encode("user\nhi")
    assert tok.decode(ids, skip_special=True) == "user\nhi"
    assert tok.add_bos and tok.bos_id == sp.bos_id() and tok.eos_id == sp.eos_id()  # SentencePiece's default
    assert tok.encode("hi", add_special=True) == [sp.bos_id(), *sp.encode("hi")]
    tool = tok.encode("use <tool> now")
    assert tok.token_to_id("<tool>") in tool  # a user-defined piece is never split
    if not prefix:
        assert tool == sp.encode("use <tool> now")


GEMMA_LIKE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<|fin|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def test_stop_token_comes_from_the_template_and_bos_is_not_doubled():
    sp = train_spm(add_dummy_prefix=False)
    tok = Tokenizer.from_gguf(spm_metadata(sp, False, chat_template=GEMMA_LIKE))
    fin = sp.piece_to_id("<|fin|>")
    assert fin in tok.stop_ids and sp.eos_id() in tok.stop_ids  # <|fin|> is in no list: the template says it
    ids, mask = tok.render_chat([{"role": "user", "content": "hi"}])
    assert ids[0] == sp.bos_id() and ids[1] != sp.bos_id()  # the template wrote BOS: not added again
    plain = Tokenizer.from_gguf(spm_metadata(sp, False, chat_template="{% for m in messages %}{{ m['content'] }}"
                                                                        "{% endfor %}"))
    ids, mask = plain.render_chat([{"role": "user", "content": "hi"}])
    assert ids == [sp.bos_id(), *sp.encode("hi")] and mask == [0] * len(ids)  # a BOS model gets BOS


def test_fallback_template_stops_on_its_end_of_turn_text():
    sp = train_spm(add_dummy_prefix=False)
    tok = Tokenizer.from_gguf(spm_metadata(sp, False))  # no template, no ChatML tokens: a base model
    assert tok.own_template is None and tok.stop_strings == ("<|im_end|>",)
    decoder = Decoder(tok, [1, 2, 3], GenerationConfig(stop_strings=("END",)), max_len=64)
    assert set(decoder.text.stops) == {"END", "<|im_end|>"}
    chatml = Tokenizer.from_gguf({k: v for k, v in tiny_metadata().items() if k != "tokenizer.chat_template"})
    assert chatml.stop_strings == ()  # the vocabulary has <|im_end|>: a stop id already


def test_llama3_bpe_keeps_whole_words_of_the_vocabulary():
    """Llama 3's tokenizer (llama-bpe) takes a pre-token that is in the vocabulary whole, whatever the merges
    say (ignore_merges), and BOS by default."""
    meta = tiny_metadata(pre="llama-bpe")
    tokens = meta["tokenizer.ggml.tokens"]
    word = "Ġzzyzx"  # in the vocabulary, with no merges to build it
    meta = {**meta, "tokenizer.ggml.tokens": [*tokens[:-1], word], "tokenizer.ggml.token_type": meta["tokenizer.ggml.token_type"]}
    meta.pop("tokenizer.ggml.add_bos_token")
    llama3 = Tokenizer.from_gguf(meta)
    assert llama3.encode("a zzyzx") == [llama3.encode("a")[0], len(tokens) - 1]
    assert llama3.add_bos
    qwen = Tokenizer.from_gguf({**meta, "tokenizer.ggml.pre": "qwen2"})
    assert len(qwen.encode("a zzyzx")) > 2 and not qwen.add_bos


def test_eot_and_eom_ids_of_the_file_stop_generation():
    meta = tiny_metadata()
    tokens = meta["tokenizer.ggml.tokens"]
    eot, eom = len(tokens) - 2, len(tokens) - 1  # padding tokens of the tiny vocabulary, named as the ends here
    tok = Tokenizer.from_gguf({**meta, "tokenizer.ggml.eot_token_id": eot, "tokenizer.ggml.eom_token_id": eom})
    assert {eot, eom} <= set(tok.stop_ids) and tok.encode(tokens[eom]) == [eom]
    assert not {eot, eom} & set(Tokenizer.from_gguf(meta).stop_ids)
