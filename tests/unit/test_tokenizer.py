"""lm/tokenizer.py with tiny tokenizer tables: GGUF rebuild, special tokens, round trips, trained and
character tokenizers, and chat templates (jinja2 itself is the oracle for the rendered text)."""

from __future__ import annotations

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lm.tokenizer import CHATML_TEMPLATE, Tokenizer, TokenizerError
from tests.support.tiny_gguf import (
    CORPUS,
    SMOLLM2_TEMPLATE,
    tiny_metadata,
    train_tiny_tokenizer,
    write_tiny_gguf,
)

MIXED = "Hello  world! 12345 — café 😀 日本語 ×∑ \n\tdef f(x):\n    return x**2\n   trailing  "

CONVERSATIONS = {
    "user_only": [{"role": "user", "content": "What is 2+2?"}],
    "system": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ],
    "multi_turn_default_system": [
        {"role": "user", "content": "Say yes"},
        {"role": "assistant", "content": "yes"},  # also appears earlier, in the user turn
        {"role": "user", "content": "Say assistant"},
        {"role": "assistant", "content": "assistant"},  # also appears in every role header
        {"role": "user", "content": "Numbers 12345 and emoji 😀?"},
        {"role": "assistant", "content": " 12345 😀 日本 "},  # surrounding spaces are kept by this template
    ],
    "empty_answer": [
        {"role": "system", "content": "You answer with nothing."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "again"},
    ],
}


def jinja_render(template: str, messages, add_generation_prompt: bool, **specials) -> str:
    """The oracle: how HF renders a chat template (sandboxed jinja2, trim_blocks, lstrip_blocks)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            **specials)


def masked_runs(tok: Tokenizer, ids: list[int], mask: list[int]) -> list[str]:
    """The text of each maximal run of masked tokens."""
    runs, cur = [], []
    for i, m in zip(ids, mask, strict=True):
        if m:
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


@pytest.fixture(scope="module")
def meta():
    return tiny_metadata()


@pytest.fixture(scope="module")
def tok(meta):
    return Tokenizer.from_gguf(meta)


# --- GGUF tables

def test_from_gguf_file_reads_tables_and_template(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "m.gguf", n_layers=1)
    tok = Tokenizer.from_gguf(tiny.path)
    assert tok.vocab_size == len(tiny.tokens) == tiny.config.vocab_size
    assert tok.chat_template == SMOLLM2_TEMPLATE
    assert [tok.id_to_token(i) for i in range(tok.vocab_size)] == tiny.tokens
    assert tok.bos_id == tiny.tokens.index("<|im_start|>") and tok.eos_id == tiny.tokens.index("<|im_end|>")


def test_ids_match_the_bpe_the_tables_came_from(tok):
    oracle = train_tiny_tokenizer(383)  # the trained tokenizer the tiny tables were written from
    for text in [*CORPUS[:6], MIXED, "the fox and the dog 2024"]:
        assert tok.encode(text) == oracle.encode(text).ids
    assert len(tok.encode("The quick brown fox")) < len("The quick brown fox")  # merges are applied


def test_special_tokens_are_single_ids(tok, meta):
    tokens = meta["tokenizer.ggml.tokens"]
    for special in ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>"]:
        assert tok.encode(special) == [tokens.index(special)]
        assert tok.token_to_id(special) == tokens.index(special)
    ids = tok.encode("a<|im_start|>user\nhi<|im_end|>b")
    assert ids.count(tok.token_to_id("<|im_start|>")) == 1 and ids.count(tok.eos_id) == 1
    assert tok.decode(ids) == "a<|im_start|>user\nhi<|im_end|>b"
    # CONTROL tokens are dropped by skip_special; a USER_DEFINED one is text and stays
    assert tok.decode(tok.encode("<|im_start|>hi <tool_call><|im_end|>"), skip_special=True) == "hi <tool_call>"


def test_round_trip_and_digits(tok):
    for text in [MIXED, "", " ", "  leading", "\n\n\n", "🏽👍🏽", "a" * 500]:
        assert tok.decode(tok.encode(text)) == text
    digits = tok.encode("x 12345")
    assert [tok.decode([i]) for i in digits[-5:]] == list("12345")  # smollm: every digit alone


def test_ids_and_stop_tokens(tok, meta):
    tokens = meta["tokenizer.ggml.tokens"]
    assert tok.vocab_size == len(tok) == len(tokens)
    assert tok.stop_ids == sorted([tokens.index("<|im_end|>"), tokens.index("<|endoftext|>")])
    assert tok.id_to_token(tok.vocab_size) is None
    assert tok.encode("hi", add_special=True) == tok.encode("hi")  # the tables ask for no BOS
    with_bos = Tokenizer.from_gguf({**meta, "tokenizer.ggml.add_bos_token": True})
    assert with_bos.encode("hi", add_special=True) == [with_bos.bos_id, *tok.encode("hi")]


def test_unsupported_tables_fail_clearly(meta):
    with pytest.raises(TokenizerError, match="unsupported pre-tokenizer 'tekken'"):
        Tokenizer.from_gguf({**meta, "tokenizer.ggml.pre": "tekken"})
    with pytest.raises(TokenizerError, match="tokenizer model 't5' is not supported"):
        Tokenizer.from_gguf({**meta, "tokenizer.ggml.model": "t5"})
    with pytest.raises(TokenizerError, match="inconsistent"):
        Tokenizer.from_gguf({**meta, "tokenizer.ggml.token_type": [1, 3]})
    with pytest.raises(TokenizerError, match="expects a str"):
        Tokenizer.from_gguf(meta).encode(b"bytes")


@pytest.mark.parametrize("pre", ["gpt2", "qwen2", "llama-bpe"])
def test_other_pre_tokenizers_round_trip(pre):
    tok = Tokenizer.from_gguf(tiny_metadata(pre=pre))
    assert tok.decode(tok.encode(MIXED)) == MIXED
    assert tok.encode("<|im_end|>") == [tok.eos_id]
    n = len(tok.encode("x 12345"))
    # qwen2 splits every digit; llama-bpe groups up to three; gpt2 keeps " 12345" as one pre-token
    assert {"qwen2": n >= 6, "llama-bpe": n >= 3, "gpt2": n >= 2}[pre]


# --- chat template

@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("gen", [True, False])
def test_render_chat_equals_the_jinja_rendering(tok, name, gen):
    messages = CONVERSATIONS[name]
    expected = jinja_render(SMOLLM2_TEMPLATE, messages, gen, bos_token="<|im_start|>", eos_token="<|im_end|>")
    assert tok.render_prompt_text(messages, add_generation_prompt=gen) == expected
    ids, mask = tok.render_chat(messages, add_generation_prompt=gen)
    assert ids == tok.encode(expected)
    assert tok.decode(ids) == expected
    assert len(mask) == len(ids) and set(mask) <= {0, 1}
    # mask == 1 exactly on each assistant turn's content and its closing <|im_end|>
    answers = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    assert masked_runs(tok, ids, mask) == answers
    if gen:  # the generation prompt is never trained on
        assert mask[-3:] == [0, 0, 0]


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


@pytest.mark.parametrize("template,specials,bos,eos,end", [
    (LLAMA3_TEMPLATE, ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
     "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"),
    (GEMMA_TEMPLATE, ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", "<end_of_turn>"),
])
def test_loss_mask_works_for_other_templates(template, specials, bos, eos, end):
    meta = tiny_metadata(specials=specials, chat_template=template, bos=bos, eos=eos)
    tok = Tokenizer.from_gguf(meta)
    messages = [
        {"role": "user", "content": "Say model"},
        {"role": "assistant", "content": "  model  "},  # trimmed by the template
        {"role": "user", "content": "And 12?"},
        {"role": "assistant", "content": "12 😀"},
    ]
    expected = jinja_render(template, messages, False, bos_token=bos, eos_token=tok.eos_token)
    ids, mask = tok.render_chat(messages, add_generation_prompt=False)
    assert ids == tok.encode(expected)
    assert masked_runs(tok, ids, mask) == ["model" + end, "12 😀" + end]


def test_template_errors_and_bad_messages_are_clear(meta):
    tok = Tokenizer.from_gguf({**meta, "tokenizer.chat_template": GEMMA_TEMPLATE})
    with pytest.raises(TokenizerError, match="Conversation roles must alternate"):
        tok.render_chat([{"role": "user", "content": "x"}, {"role": "user", "content": "y"}])
    with pytest.raises(TokenizerError, match="System role not supported"):  # nothing to fold it into
        tok.render_chat([{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}])
    with pytest.raises(TokenizerError, match="message 1 must be a dict"):
        tok.render_chat([{"role": "user", "content": "x"}, {"role": "assistant", "content": None}])
    with pytest.raises(TokenizerError, match="list of"):
        tok.render_prompt_text("hello")
    broken = Tokenizer.from_gguf({**meta, "tokenizer.chat_template": "{% for m in messages %}"})
    with pytest.raises(TokenizerError, match="does not compile"):
        broken.render_prompt_text([{"role": "user", "content": "x"}])


def test_a_system_message_the_template_refuses_is_folded_into_the_first_user_turn():
    tok = Tokenizer.from_gguf(tiny_metadata(specials=["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"],
                                            chat_template=GEMMA_TEMPLATE, bos="<bos>", eos="<eos>"))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    text = tok.render_prompt_text(messages)
    assert text == jinja_render(GEMMA_TEMPLATE, [{"role": "user", "content": "Be brief.\n\nHi"}, *messages[2:]], True,
                                bos_token=tok.bos_token, eos_token=tok.eos_token,
                                raise_exception=lambda m: 1 / 0)
    ids, mask = tok.render_chat(messages, add_generation_prompt=False)
    assert masked_runs(tok, ids, mask) == ["Hello.<end_of_turn>"]


def test_chatml_fallback_without_a_template(meta):
    tok = Tokenizer.from_gguf({k: v for k, v in meta.items() if k != "tokenizer.chat_template"})
    assert tok.chat_template == CHATML_TEMPLATE
    messages = CONVERSATIONS["system"]
    text = tok.render_prompt_text(messages, add_generation_prompt=False)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n" \
                   "<|im_start|>assistant\nBlue.<|im_end|>\n"
    ids, mask = tok.render_chat(messages, add_generation_prompt=False)
    assert masked_runs(tok, ids, mask) == ["Blue.<|im_end|>"]


# --- tokenizers for models trained from scratch

def test_train_bpe_save_and_load(tmp_path):
    tok = Tokenizer.train_bpe(CORPUS, vocab_size=320)
    assert 259 < tok.vocab_size <= 320
    assert [tok.token_to_id(t) for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]] == [0, 1, 2]
    assert tok.eos_id == 0 and tok.stop_ids == [0, 2] and tok.bos_id is None
    assert tok.decode(tok.encode(MIXED)) == MIXED
    assert len(tok.encode("the quick brown fox")) < len("the quick brown fox")
    ids, mask = tok.render_chat(CONVERSATIONS["system"], add_generation_prompt=False)  # ChatML fallback
    assert masked_runs(tok, ids, mask) == ["Blue.<|im_end|>"]

    tok.save(tmp_path / "tok")
    again = Tokenizer.from_file(tmp_path / "tok")
    assert again.encode(MIXED) == tok.encode(MIXED)
    assert (again.vocab_size, again.eos_id, again.stop_ids) == (tok.vocab_size, tok.eos_id, tok.stop_ids)
    assert again.render_chat(CONVERSATIONS["system"]) == tok.render_chat(CONVERSATIONS["system"])
    with pytest.raises(TokenizerError, match="below the 256 byte tokens"):
        Tokenizer.train_bpe(CORPUS, vocab_size=100)


def test_gguf_tokenizer_saved_keeps_its_template(tmp_path, tok):
    tok.save(tmp_path)
    again = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert again.chat_template == SMOLLM2_TEMPLATE and again.eos_id == tok.eos_id and again.bos_id == tok.bos_id
    assert again.encode(MIXED) == tok.encode(MIXED)
    with pytest.raises(TokenizerError, match="no such tokenizer file"):
        Tokenizer.from_file(tmp_path / "missing.json")


def test_char_tokenizer(tmp_path):
    texts = ["hello world\n", "héllo 😀"]
    tok = Tokenizer.char(texts)
    chars = sorted(set("".join(texts)))
    assert tok.vocab_size == 3 + 1 + len(chars)
    ids = tok.encode("hello 😀\n")
    assert len(ids) == len("hello 😀\n") and tok.decode(ids) == "hello 😀\n"
    assert tok.encode("<|im_start|>he<|im_end|>") == [1, tok.token_to_id("h"), tok.token_to_id("e"), 2]
    assert tok.encode("hz") == [tok.token_to_id("h"), tok.token_to_id("<unk>")]  # unseen character
    tok.save(tmp_path)
    again = Tokenizer.from_file(tmp_path)
    assert again.encode("hello 😀") == tok.encode("hello 😀") and again.eos_id == tok.eos_id
    ids, mask = again.render_chat(CONVERSATIONS["multi_turn_default_system"][:2], add_generation_prompt=False)
    assert masked_runs(again, ids, mask) == ["<unk>e<unk><|im_end|>"]  # "y" and "s" were never seen


def test_templates_are_sandboxed():
    # templates come from model files: attribute escapes to Python internals must be refused
    tok = Tokenizer.char(["ab"])
    tok.chat_template = "{{ messages.__class__.__base__.__subclasses__() }}"
    with pytest.raises(TokenizerError, match="chat template failed"):
        tok.render_prompt_text([])
