"""lm.engine on tiny real Transformers and a tiny byte-level lm.tokenizer.Tokenizer built with `tokenizers`.

Two kinds of model:
- a random one (cache correctness, sampling, penalties);
- a "chain" one: a real Transformer whose weights are set so that greedy decoding follows a chosen successor
  map token -> next token (blocks add nothing to the residual stream, the head maps each embedding to its
  successor), which makes the generated text known in advance (stop strings, UTF-8 streaming, stop ids).
"""

from __future__ import annotations

import threading

import pytest
import torch
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from lm.config import ModelConfig
from lm.engine import (
    ContextOverflow,
    Engine,
    GenerationConfig,
    NgramBlocker,
    allowed_logits,
    apply_repetition_penalty,
    sample_rows,
    sample_token,
    trim_messages,
)
from lm.model import KVCache, Transformer
from lm.tokenizer import Tokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    """Byte-level tokenizer with no merges: every UTF-8 byte is one token (ids 3..258), plus 3 specials."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(SPECIALS + alphabet)}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return Tokenizer(hf, eos_token="<|im_end|>")


def tiny_config(vocab: int, **kw) -> ModelConfig:
    return ModelConfig(vocab_size=vocab, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128,
                       max_seq_len=256, **kw)


@pytest.fixture(scope="module")
def random_model(tok) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(tiny_config(len(tok))).init_weights(seed=0).eval()
    with torch.no_grad():  # larger logits than the 0.02-std init: a peaked distribution, greedy loops quickly
        model.output.weight.mul_(40.0)
    return model


def chain_model(tok: Tokenizer, sequence: list[int]) -> Transformer:
    """Greedy decoding from sequence[i] produces sequence[i + 1] (each token has one successor)."""
    succ = dict(zip(sequence[:-1], sequence[1:], strict=True))
    model = Transformer(tiny_config(len(tok), tie_embeddings=False)).init_weights(seed=1).eval()
    with torch.no_grad():
        for block in model.layers:  # blocks add nothing: the last hidden state is the token's own embedding
            block.attention.wo.weight.zero_()
            block.feed_forward.w2.weight.zero_()
        emb = model.tok_embeddings.weight
        for a, b in succ.items():
            model.output.weight[b] = 10.0 * emb[a] / emb[a].norm()
    return model


def full_greedy(model: Transformer, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding by recomputing the whole sequence each step (no cache): the reference."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


# ---------------------------------------------------------------------------------------------- cache


def test_cached_greedy_equals_full_recompute(random_model, tok):
    prompt = tok.encode("hello world")
    r = Engine(random_model, tok).generate(prompt, GenerationConfig(max_new_tokens=12, ignore_stop_ids=True))
    assert r.ids == full_greedy(random_model, prompt, 12)
    assert (r.finish_reason, r.prompt_tokens, r.new_tokens) == ("length", len(prompt), 12)


@pytest.mark.parametrize("weights", ["fp32", "int4"])
def test_one_token_decode_gives_the_full_forwards_logits(tok, weights):
    """Transformer.decode (the one-token path that forward() takes with a cache) computes what the general path
    computes: each decoded position's logits equal a full forward's, on one row and on rows of a SlotBatch at
    their own positions."""
    from lm.quant import quantize_model
    from lm.slots import SlotBatch, SlotStore

    torch.manual_seed(0)  # FBGEMM off: the head's 8-bit activations for decode rows would differ by design
    model = quantize_model(Transformer(tiny_config(len(tok))).init_weights(seed=0).eval(), weights, vnni=False)
    seqs = [tok.encode(text) for text in ("first sequence", "the second one")]  # <= 16 tokens: one kernel (int4)
    with torch.inference_mode():
        full = [model(torch.tensor([s]))[0] for s in seqs]  # (T, V): the general path, no cache
        cache = KVCache(model.config, max_len=64)
        model(torch.tensor([seqs[0][:3]]), cache=cache)
        steps = torch.stack([model(torch.tensor([[t]]), cache=cache)[0, -1] for t in seqs[0][3:]])
        torch.testing.assert_close(steps, full[0][3:], atol=1e-4, rtol=1e-4)
        store = SlotStore(model.config, 2, 64, dtype=torch.float32)
        store.reserve(32)
        for r, s in enumerate(seqs):
            model(torch.tensor([s[:2]]), cache=store.row(r, 0))
        lengths = torch.tensor([2, 2])
        for t in range(2, len(seqs[0])):
            rows = model(torch.tensor([[seqs[0][t]], [seqs[1][t]]]), cache=SlotBatch(store, lengths))[:, -1]
            for r in range(2):
                torch.testing.assert_close(rows[r], full[r][t], atol=1e-4, rtol=1e-4)
            lengths += 1


def test_rms_norm_rows_follow_forward_and_the_weight():
    """RMSNorm.rows, decode's three-kernel norm with a scaled copy of the weight, gives forward()'s output, also
    for a row whose mean square is below eps, and still after the weight is changed in place (an optimizer step,
    load_state_dict) or replaced (load_state_dict with assign=True)."""
    from lm.model import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(64, 1e-5)
    x = torch.randn(3, 64)
    x[2] *= 1e-4  # mean square 1e-8: where eps enters the formula decides this row
    with torch.no_grad():
        norm.weight.normal_()
        torch.testing.assert_close(norm.rows(x), norm(x))
        norm.weight.mul_(-2.0)
        torch.testing.assert_close(norm.rows(x), norm(x))
    norm.load_state_dict({"weight": torch.randn(64)})
    torch.testing.assert_close(norm.rows(x), norm(x))
    norm.load_state_dict({"weight": torch.randn(64)}, assign=True)
    torch.testing.assert_close(norm.rows(x), norm(x))


def test_prefix_reuse_across_turns_gives_the_same_logits(random_model, tok):
    engine = Engine(random_model, tok)
    p1 = tok.encode("first turn")
    r1 = engine.generate(p1, GenerationConfig(max_new_tokens=5, ignore_stop_ids=True))
    p2 = p1 + r1.ids + tok.encode(" second turn")
    r2 = engine.generate(p2, GenerationConfig(max_new_tokens=6, ignore_stop_ids=True))
    # only the tokens after the cached prompt+answer were prefilled (the last answer token was never fed)
    assert engine.last_prefilled == len(p2) - (len(p1) + len(r1.ids) - 1)
    assert r2.ids == full_greedy(random_model, p2, 6)
    # and at the logits level: a prefill that reuses the cache equals a full forward
    p3 = p2 + r2.ids[:3] + tok.encode("!")
    with torch.no_grad():
        reused = engine._prefill(p3)
        full = random_model(torch.tensor([p3]))[0, -1]
    assert engine.last_prefilled < len(p3)
    torch.testing.assert_close(reused, full, atol=1e-5, rtol=1e-5)
    # a prompt that diverges early is prefilled from the divergence point only
    p4 = p1[:2] + tok.encode("zz")
    assert engine.generate(p4, GenerationConfig(max_new_tokens=3, ignore_stop_ids=True)).ids == \
        full_greedy(random_model, p4, 3)
    assert engine.last_prefilled == len(p4) - 2
    # reuse_cache=False prefills everything
    engine.generate(p4, GenerationConfig(max_new_tokens=2, reuse_cache=False))
    assert engine.last_prefilled == len(p4)


# ---------------------------------------------------------------------------------------------- sampling


def test_greedy_is_deterministic_and_top_k_1_is_greedy(random_model, tok):
    engine = Engine(random_model, tok)
    prompt = tok.encode("abc")
    greedy = engine.generate(prompt, GenerationConfig(max_new_tokens=10, ignore_stop_ids=True)).ids
    assert engine.generate(prompt, GenerationConfig(max_new_tokens=10, ignore_stop_ids=True)).ids == greedy
    top1 = engine.generate(prompt, GenerationConfig(max_new_tokens=10, temperature=1.5, top_k=1, seed=3,
                                                    ignore_stop_ids=True)).ids
    assert top1 == greedy


def test_seeded_sampling_is_reproducible_and_seeds_differ(random_model, tok):
    engine = Engine(random_model, tok)
    prompt = tok.encode("abc")

    def run(seed: int) -> list[int]:
        return engine.generate(prompt, GenerationConfig(max_new_tokens=20, temperature=40.0, seed=seed,
                                                        ignore_stop_ids=True)).ids

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_top_k_and_top_p_never_sample_outside_the_allowed_set():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, generator=gen)
    probs = torch.softmax(logits, -1)
    order = probs.argsort(descending=True).tolist()
    # the set computed here independently: top 7 by probability; top-p 0.6 = smallest prefix reaching 0.6
    top7 = set(order[:7])
    cum, top_p = 0.0, set()
    for i in order:
        top_p.add(i)
        cum += float(probs[i])
        if cum >= 0.6:
            break
    assert 1 < len(top_p) < 50
    # top-p on the top-k set: renormalised over the top 3
    p3 = probs[order[:3]] / probs[order[:3]].sum()
    both = {order[0]} | ({order[1]} if float(p3[0]) < 0.6 else set())
    if float(p3[0] + p3[1]) < 0.6:
        both.add(order[2])
    for cfg, allowed in [(GenerationConfig(temperature=1.0, top_k=7), top7),
                         (GenerationConfig(temperature=1.0, top_p=0.6), top_p),
                         (GenerationConfig(temperature=1.0, top_k=3, top_p=0.6), both)]:
        draws = {sample_token(logits.clone(), cfg, gen) for _ in range(2000)}
        assert draws <= allowed, (cfg, draws - allowed)
        assert draws == allowed  # 2,000 draws reach every allowed token (smallest probability here > 1%)
    vals, ids = allowed_logits(logits, 7, 1.0)
    assert set(ids.tolist()) == top7 and torch.isfinite(vals).all()


def test_sampling_rows_together_draws_what_each_row_would_alone():
    """sample_rows shares the vocabulary-wide work of rows with the same settings; every row still draws exactly
    the token sample_token gives it with its own generator (seeded replies do not depend on the batch)."""
    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(0)) * 3
    configs = [GenerationConfig(temperature=0.7, top_k=20, top_p=0.9, seed=s) for s in range(4)]
    configs += [GenerationConfig(temperature=0.0), GenerationConfig(temperature=1.3, top_k=5, seed=9)]
    rows = [5, 0, 3, 1, 2, 4]
    for _ in range(20):
        seeds = torch.randint(0, 2**31, (6,)).tolist()
        together = sample_rows(logits, rows, configs, [torch.Generator().manual_seed(s) for s in seeds])
        alone = [sample_token(logits[r].clone(), c, torch.Generator().manual_seed(s))
                 for r, c, s in zip(rows, configs, seeds, strict=True)]
        assert together == alone
    assert together[4] == int(logits[2].argmax())  # the greedy row


def test_repetition_penalty_follows_the_ctrl_definition():
    logits = torch.tensor([2.0, -2.0, 1.0, -1.0, 0.5])
    seen = torch.tensor([0, 1, 1, 4])  # duplicates are allowed
    out = apply_repetition_penalty(logits.clone(), seen, 2.0)
    torch.testing.assert_close(out, torch.tensor([1.0, -4.0, 1.0, -1.0, 0.25]))


def test_repetition_penalty_in_generation_covers_prompt_and_output(random_model, tok):
    engine = Engine(random_model, tok)
    prompt = tok.encode("abcabc")
    plain = engine.generate(prompt, GenerationConfig(max_new_tokens=30, ignore_stop_ids=True)).ids
    assert len(set(plain)) < len(plain)  # without the penalty this model repeats itself
    penal = engine.generate(prompt, GenerationConfig(max_new_tokens=30, repetition_penalty=1e6,
                                                     ignore_stop_ids=True)).ids
    assert len(set(penal)) == len(penal) and not set(penal) & set(prompt)


def test_no_repeat_ngram_breaks_loops_but_allows_copying_the_prompt(random_model, tok):
    engine = Engine(random_model, tok)
    prompt = tok.encode("abcabc")
    plain = engine.generate(prompt, GenerationConfig(max_new_tokens=40, ignore_stop_ids=True)).ids
    grams = [tuple(plain[i:i + 3]) for i in range(len(plain) - 2)]
    assert len(set(grams)) < len(grams)  # this model loops without the guard
    guarded = engine.generate(prompt, GenerationConfig(max_new_tokens=40, no_repeat_ngram=3,
                                                       ignore_stop_ids=True)).ids
    grams = [tuple(guarded[i:i + 3]) for i in range(len(guarded) - 2)]
    assert len(guarded) == 40 and len(set(grams)) == len(grams)
    # the prompt's own 3-grams are not banned: a chain model that copies "abc" after "abc" still does
    seq = tok.encode("abcab")
    copier = Engine(chain_model(tok, seq), tok)
    out = copier.generate(seq[:1], GenerationConfig(max_new_tokens=4, no_repeat_ngram=3, ignore_stop_ids=True))
    assert out.text == "bcab"


def test_ngram_blocker_bans_exactly_the_completions_seen_before():
    blocker = NgramBlocker(3)
    out = []
    for t in [1, 2, 3, 1, 2]:
        out.append(t)
        blocker.add(out)
    assert blocker.banned(out) == [3]  # "1 2" was followed by 3 once
    assert blocker.banned(out[:-1]) == [2]  # and "3 1" by 2
    assert blocker.banned([2, 1]) == [] and blocker.banned([1]) == []  # unseen, or shorter than n - 1


# ---------------------------------------------------------------------------------------------- stops and text


def test_stop_id_ends_generation(tok):
    seq = tok.encode("Hi!") + [tok.eos_id]
    engine = Engine(chain_model(tok, seq), tok)
    r = engine.generate(seq[:1], GenerationConfig(max_new_tokens=20))
    assert (r.text, r.finish_reason, r.new_tokens) == ("i!", "stop", 2)
    assert tok.eos_id not in r.ids


def test_stop_string_ends_generation_and_is_not_emitted(tok):
    seq = tok.encode("Hey, ENDmo")  # all bytes distinct
    engine = Engine(chain_model(tok, seq), tok)
    stream = engine.stream(seq[:1], GenerationConfig(max_new_tokens=30, stop_strings=("END",)))
    deltas = list(stream)
    assert "".join(deltas) == "ey, " == stream.result.text
    assert stream.result.finish_reason == "stop_string"
    # "E" and "EN" were held back until "END" was complete, so no delta ever showed part of the stop string
    assert not any("E" in d for d in deltas)


def test_a_partial_stop_string_is_released(tok):
    seq = tok.encode("Hey, ENDmo")
    engine = Engine(chain_model(tok, seq), tok)
    stream = engine.stream(seq[:1], GenerationConfig(max_new_tokens=9, stop_strings=("ENX",)))
    assert "".join(stream) == "ey, ENDmo"
    assert stream.result.finish_reason == "length"


def test_streaming_never_splits_a_utf8_character(tok):
    text = "a😀世é!"  # 1 + 4 + 3 + 2 + 1 bytes, all distinct
    seq = [tok.token_to_id("<|im_start|>")] + tok.encode(text) + [tok.eos_id]
    assert len(seq) == 13
    engine = Engine(chain_model(tok, seq), tok)
    stream = engine.stream(seq[:1], GenerationConfig(max_new_tokens=40))
    deltas = list(stream)
    assert "".join(deltas) == text == stream.result.text
    assert not any("\ufffd" in d for d in deltas)
    assert deltas == ["a", "😀", "世", "é", "!"]
    # generate() gives the same text
    assert engine.generate(seq[:1], GenerationConfig(max_new_tokens=40)).text == text


# ---------------------------------------------------------------------------------------------- limits


def test_context_overflow_is_a_clear_error(random_model, tok):
    engine = Engine(random_model, tok, max_len=32)
    with pytest.raises(ContextOverflow, match=r"prompt has 32 tokens.*context window of 32 tokens"):
        engine.generate(list(range(3, 35)), GenerationConfig(max_new_tokens=4))
    r = engine.generate(list(range(3, 34)), GenerationConfig(max_new_tokens=4, ignore_stop_ids=True))
    assert (r.new_tokens, r.finish_reason) == (1, "length")  # the one position left


def test_trim_messages_drops_oldest_turns_and_keeps_the_system_prompt():
    tok = Tokenizer.char(["abcdefghijklmnopqrstuvwxyz ?!\nsystemuserassistant"])
    msgs = [{"role": "system", "content": "be brief"}]
    for i in range(4):
        msgs += [{"role": "user", "content": f"question {'abcd'[i]}?"}, {"role": "assistant", "content": "answer"}]
    msgs.append({"role": "user", "content": "latest?"})

    def size(m):
        return len(tok.render_chat(m)[0])

    assert trim_messages(msgs, tok, size(msgs) + 10, 10) == msgs  # fits: unchanged
    budget = size([msgs[0]] + msgs[-3:]) + 20  # room for the system prompt, the last exchange and the answer
    kept = trim_messages(msgs, tok, budget, reserve_new_tokens=20)
    assert kept == [msgs[0]] + msgs[-3:]
    assert size(kept) + 20 <= budget
    with pytest.raises(ContextOverflow, match=r"latest message has 7 tokens.*limit of 5 tokens"):
        trim_messages(msgs, tok, 25, reserve_new_tokens=20)


def test_cancel_stops_at_the_next_token(random_model, tok):
    engine = Engine(random_model, tok)
    cancel = threading.Event()
    stream = engine.stream(tok.encode("abc"), GenerationConfig(max_new_tokens=50, ignore_stop_ids=True), cancel)
    got = []
    for delta in stream:
        got.append(delta)
        cancel.set()
    assert stream.result.finish_reason == "cancelled"
    assert stream.result.new_tokens <= 4  # the first token, plus at most the few held back as partial UTF-8
    cancel2 = threading.Event()
    cancel2.set()
    r = engine.generate(tok.encode("abc"), GenerationConfig(max_new_tokens=50), cancel2)
    assert (r.finish_reason, r.new_tokens, r.text) == ("cancelled", 0, "")


def test_concurrent_calls_are_serialised(random_model, tok):
    engine = Engine(random_model, tok)
    prompts = [tok.encode(w) for w in ("one", "two", "three", "four")]
    expected = [full_greedy(random_model, p, 8) for p in prompts]
    results: dict[int, list[int]] = {}

    def work(i: int) -> None:
        results[i] = engine.generate(prompts[i], GenerationConfig(max_new_tokens=8, ignore_stop_ids=True)).ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(4)] == expected


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="no_repeat_ngram"):
        GenerationConfig(no_repeat_ngram=1)
