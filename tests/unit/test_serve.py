"""lm.serve on tiny real Transformers: batched decoding equals single-stream decoding, requests join and leave
mid-batch, cancellation, the prefix cache, the queue, chunked prefill and priorities."""

# ruff: noqa: F811 (test_engine's fixtures are imported, and test arguments of the same name use them)

from __future__ import annotations

import threading

import pytest
import torch

from lm.engine import Engine, GenerationConfig
from lm.serve import Queued, Server, Started
from lm.slots import PrefixCache
from tests.unit.test_engine import chain_model, full_greedy, random_model, tok  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

GREEDY = GenerationConfig(max_new_tokens=12, ignore_stop_ids=True)


def prompts(tok, n: int) -> list[list[int]]:
    """n prompts of different lengths (so the batch rows sit at different positions)."""
    return [tok.encode(f"prompt number {i}: " + "abc" * i) for i in range(n)]


@pytest.fixture
def server(random_model, tok):
    s = Server(random_model, tok, slots=4, prefill_chunk=64, kv_dtype=torch.float32)
    yield s
    s.close()


def test_batched_greedy_equals_single_stream(server, random_model, tok):
    ps = prompts(tok, 4)
    tickets = [server.submit(p, GREEDY) for p in ps]
    batched = [list(_drain(t).ids) for t in tickets]
    engine = Engine(random_model, tok)
    single = [engine.generate(p, GenerationConfig(max_new_tokens=12, ignore_stop_ids=True,
                                                  reuse_cache=False)).ids for p in ps]
    assert batched == single
    assert batched[0] == full_greedy(random_model, ps[0], 12)
    assert len({tuple(b) for b in batched}) > 1  # the rows really differ


def test_bf16_keys_and_values_batched_equal_single_stream(random_model, tok):
    server = Server(random_model, tok, slots=6, kv_dtype=torch.bfloat16)
    ps = prompts(tok, 6)  # 6 rows x 128 positions: the bf16 matmul path, not SDPA (lm.model.SMALL_ATTENTION)
    try:
        batched = [_drain(t).ids for t in [server.submit(p, GREEDY) for p in ps]]
    finally:
        server.close()
    engine = Engine(random_model, tok, kv_dtype=torch.bfloat16)
    assert batched == [engine.generate(p, GREEDY).ids for p in ps]


@pytest.mark.parametrize("rows,keys", [(1, 100), (6, 200)])  # SDPA on converted keys; two bf16 matmuls
def test_attention_over_a_bf16_cache_matches_float32(rows, keys):
    from lm.model import SMALL_ATTENTION, cached_attention

    torch.manual_seed(0)
    q = torch.randn(rows, 4, 1, 16)
    k, v = torch.randn(rows, 2, keys, 16), torch.randn(rows, 2, keys, 16)
    lengths = torch.randint(1, keys, (rows,))
    mask = (torch.arange(keys)[None, :] < lengths[:, None])[:, None, None, :]  # (R, 1, 1, S), per-row lengths
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    got = cached_attention(q, k.bfloat16(), v.bfloat16(), mask, False).float()
    assert (rows * keys <= SMALL_ATTENTION) == (rows == 1)
    assert torch.allclose(got, want, atol=0.05), float((got - want).abs().max())
    bias = torch.zeros(mask.shape).masked_fill_(~mask, float("-inf"))  # the same mask as an additive bias
    got = cached_attention(q, k.bfloat16(), v.bfloat16(), bias, False).float()
    assert torch.allclose(got, want, atol=0.05), float((got - want).abs().max())
    chunk = torch.randn(rows, 4, 5, 16)  # a prefill chunk: causal on its own, or after the cached keys
    sdpa = torch.nn.functional.scaled_dot_product_attention
    want = sdpa(chunk, k[:, :, :5], v[:, :, :5], is_causal=True, enable_gqa=True)
    got = cached_attention(chunk, k[:, :, :5].bfloat16(), v[:, :, :5].bfloat16(), None, True).float()
    assert torch.allclose(got, want, atol=0.05)
    after = torch.ones(5, keys, dtype=torch.bool).tril(keys - 5)  # query i sees keys 0 .. keys-5+i
    want = sdpa(chunk, k, v, attn_mask=after, enable_gqa=True)
    got = cached_attention(chunk, k.bfloat16(), v.bfloat16(), after, False).float()
    assert torch.allclose(got, want, atol=0.05)


def test_sampling_keeps_each_requests_seed_and_settings(server, random_model, tok):
    ps = prompts(tok, 3)
    cfgs = [GenerationConfig(max_new_tokens=10, temperature=t, top_k=k, seed=s, ignore_stop_ids=True)
            for t, k, s in ((0.8, 0, 1), (1.2, 20, 2), (0.5, 5, 3))]
    tickets = [server.submit(p, c) for p, c in zip(ps, cfgs, strict=True)]
    batched = [_drain(t).ids for t in tickets]
    engine = Engine(random_model, tok)
    assert batched == [engine.generate(p, c).ids for p, c in zip(ps, cfgs, strict=True)]


def test_requests_join_and_leave_mid_batch(random_model, tok):
    """B joins while A decodes and leaves before A ends; C waits for a slot; every output is unaffected."""
    server = Server(random_model, tok, slots=2, prefill_chunk=64, kv_dtype=torch.float32)
    ps = prompts(tok, 3)
    long_cfg = GenerationConfig(max_new_tokens=30, ignore_stop_ids=True)
    short_cfg = GenerationConfig(max_new_tokens=4, ignore_stop_ids=True)
    events: list[tuple[str, object]] = []
    tickets: dict[str, object] = {}
    done = threading.Event()
    results = {}

    def listen(name):
        def on(event):
            events.append((name, event))
            if name == "A" and isinstance(event, str) and sum(1 for n, e in events if n == "A"
                                                               and isinstance(e, str)) == 5:
                tickets["B"] = server.submit(ps[1], short_cfg, listener=listen("B"))
                tickets["C"] = server.submit(ps[2], short_cfg, listener=listen("C"))
            if hasattr(event, "finish_reason"):
                results[name] = event
                if len(results) == 3:
                    done.set()
        return on

    try:
        server.submit(ps[0], long_cfg, listener=listen("A"))
        assert done.wait(60)
    finally:
        server.close()
    engine = Engine(random_model, tok)
    assert results["A"].ids == engine.generate(ps[0], long_cfg).ids
    assert results["B"].ids == engine.generate(ps[1], short_cfg).ids
    assert results["C"].ids == engine.generate(ps[2], short_cfg).ids
    order = [n for n, e in events if hasattr(e, "finish_reason")]
    assert order.index("B") < order.index("A")  # B left mid-batch while A went on
    assert ("C", Queued(0)) in events  # both slots were busy: C waited, then ran
    a_after_b = [e for n, e in events[[i for i, (n, e) in enumerate(events) if n == "B"][0]:]
                 if n == "A" and isinstance(e, str)]
    assert a_after_b  # A kept streaming while B was in the batch


def test_cancelling_one_stream_leaves_the_others_untouched(server, random_model, tok):
    ps = prompts(tok, 3)
    cfg = GenerationConfig(max_new_tokens=20, ignore_stop_ids=True)
    cancel = threading.Event()
    seen = []

    def on_b(event):
        seen.append(event)
        if sum(isinstance(e, str) for e in seen) == 3:
            cancel.set()

    a = server.submit(ps[0], cfg)
    b_done = threading.Event()
    server.submit(ps[1], cfg, cancel=cancel, listener=lambda e: (on_b(e), hasattr(e, "finish_reason")
                                                                 and b_done.set()))
    c = server.submit(ps[2], cfg)
    results = [_drain(a), _drain(c)]
    assert b_done.wait(30)
    b = seen[-1]
    assert b.finish_reason == "cancelled" and 3 <= len(b.ids) < 20
    engine = Engine(random_model, tok)
    assert [r.ids for r in results] == [engine.generate(ps[i], cfg).ids for i in (0, 2)]


def test_next_turn_prefills_only_its_new_tokens(server, random_model, tok):
    p1 = tok.encode("the first turn of a chat")
    r1 = server.generate(p1, GREEDY)
    assert r1.timings["prefilled_tokens"] == len(p1)
    p2 = p1 + r1.ids + tok.encode(" and the second turn")
    r2 = server.generate(p2, GREEDY)
    # the last answer token was never fed, so it is prefilled with the new text
    assert r2.timings["prefilled_tokens"] == len(p2) - (len(p1) + len(r1.ids) - 1)
    assert r2.ids == full_greedy(random_model, p2, 12)
    fresh = server.generate(p2, GenerationConfig(max_new_tokens=12, ignore_stop_ids=True, reuse_cache=False))
    assert fresh.timings["prefilled_tokens"] == len(p2)


def test_chats_admitted_together_share_their_common_prefix(random_model, tok):
    """Chats with the same system prompt, arriving at once: the first prefills it, the others copy its keys and
    values from the first one's slot (nothing is cached yet), and every answer is the single-stream one."""
    server = Server(random_model, tok, slots=3, prefill_chunk=512, kv_dtype=torch.float32)
    system = tok.encode("you are a helpful assistant who answers briefly and well. " * 2)
    ps = [system + tok.encode(f" question {i}?") for i in range(3)]
    try:
        with server._wake:  # all three are admitted in the same step
            tickets = [server.submit(p, GREEDY) for p in ps]
        results = [_drain(t) for t in tickets]
    finally:
        server.close()
    shared = next(i for i, (a, b) in enumerate(zip(ps[0], ps[1], strict=False)) if a != b)
    assert shared > len(system) - 2 and all(p[:shared] == ps[0][:shared] for p in ps)
    assert results[0].timings["prefilled_tokens"] == len(ps[0])
    assert [r.timings["prefilled_tokens"] for r in results[1:]] == [len(p) - shared for p in ps[1:]]
    engine = Engine(random_model, tok)
    assert [r.ids for r in results] == [engine.generate(p, GREEDY).ids for p in ps]


def test_a_lone_row_decodes_on_float32_keys_and_keeps_the_store_complete(random_model, tok):
    """A sequence decoding alone reads a float32 copy of its keys and values (MirroredRow); every position it adds
    is written to the bf16 store too, so what the store holds when it ends (its prefix-cache entry) is what the
    single-stream engine computed, and a request joining later reads complete keys."""
    engine = Engine(random_model, tok)

    def check(entry: tuple[int, ...], kv: tuple[torch.Tensor, torch.Tensor]) -> None:
        assert_engine_keys(engine, entry, kv, atol=0.02)

    prompt, second, other = (tok.encode(t) for t in ("a lone request decodes", "this one is joined", "by another"))
    server = Server(random_model, tok, slots=2, kv_dtype=torch.bfloat16)
    try:
        alone = server.generate(prompt, GREEDY)  # decodes alone from start to end
        (entry, kv), = kept(server).items()
        assert entry == tuple(prompt + alone.ids[:-1])  # the last token was never fed
        check(entry, kv)
        server.forget().result()
        events = Events(2)
        joined = threading.Event()

        def join_after_three(event):  # B arrives after A has decoded three tokens alone
            if isinstance(event, str) and sum(isinstance(e, str) for _, e in events.log) == 3 and not joined.is_set():
                joined.set()
                server.submit(other, GREEDY, listener=events.listener("B"))
        server.submit(second, GenerationConfig(max_new_tokens=20, ignore_stop_ids=True),
                      listener=events.listener("A", join_after_three))  # a new prompt: slot 0 holds other keys
        assert events.done.wait(60)
    finally:
        server.close()
    a_entry = next(e for e in kept(server) if e[:len(second)] == tuple(second))
    check(a_entry, kept(server)[a_entry])


def assert_engine_keys(engine: Engine, entry: tuple[int, ...], kv: tuple[torch.Tensor, torch.Tensor],
                       atol: float) -> None:
    """A finished sequence's kept keys and values are the single-stream engine's for the same tokens."""
    engine.generate(list(entry), GenerationConfig(max_new_tokens=1, reuse_cache=False))
    n = len(entry)
    for got, want in zip(kv, (engine._cache.k[:, 0, :, :n], engine._cache.v[:, 0, :, :n]), strict=True):
        torch.testing.assert_close(got.float(), want, atol=atol * float(want.abs().max()), rtol=0.01)


def test_a_chats_next_turn_uses_its_parked_slot_in_place(random_model, tok):
    """A finished chat's keys stay in its slot: its next turn is admitted there and prefills only its new tokens,
    with nothing copied out; another chat takes the lowest slot, whose keys then move to the prefix cache."""
    server = Server(random_model, tok, slots=2, kv_dtype=torch.float32)
    try:
        a, b = tok.encode("the first chat asks"), tok.encode("a second chat says")
        with server._wake:  # admitted together: a to slot 0, b to slot 1
            ta, tb = server.submit(a, GREEDY), server.submit(b, GREEDY)
        turns = {"a": (a, _drain(ta)), "b": (b, _drain(tb))}
        assert server.load()["cached_tokens"] == 0 and server.load()["parked_tokens"] > 0
        for name, (p, r) in list(turns.items()):
            p2 = p + r.ids + tok.encode(" and then more")
            r2 = server.generate(p2, GREEDY)
            assert r2.timings["prefilled_tokens"] == len(p2) - (len(p) + len(r.ids) - 1)
            assert r2.ids == full_greedy(random_model, p2, 12)
            turns[name] = (p2, r2)
        assert server.load()["cached_tokens"] == 0  # in place both times: nothing was copied
        c = tok.encode("an unrelated third chat")
        assert server.generate(c, GREEDY).ids == full_greedy(random_model, c, 12)
        a2, ra2 = turns["a"]
        assert server.load()["cached_tokens"] == len(a2) + len(ra2.ids) - 1  # slot 0's turn moved out for c
        a3 = a2 + ra2.ids + tok.encode("!")
        r3 = server.generate(a3, GREEDY)
        assert r3.timings["prefilled_tokens"] == len(a3) - (len(a2) + len(ra2.ids) - 1)  # from the prefix cache
        assert r3.ids == full_greedy(random_model, a3, 12)
    finally:
        server.close()


def test_a_parked_slot_inside_a_batch_keeps_its_keys(random_model, tok):
    """A slot parked below running ones is a padding row of their batched steps: its padding keys go after the
    parked ones, which stay the engine's."""
    server = Server(random_model, tok, slots=3, kv_dtype=torch.float32)
    x, y, z = prompts(tok, 3)
    steps = GenerationConfig(max_new_tokens=20, ignore_stop_ids=True)
    try:
        with server._wake:  # y (slot 1) ends after 3 tokens; x and z decode 17 more steps in rows 0-2
            tickets = [server.submit(x, steps), server.submit(y, GenerationConfig(max_new_tokens=3,
                       ignore_stop_ids=True)), server.submit(z, steps)]
        for t in tickets:
            _drain(t)
        (entry, kv), = [(ids, kv) for ids, kv in kept(server).items() if ids[:len(y)] == tuple(y)]
    finally:
        server.close()
    assert len(entry) == len(y) + 2
    assert_engine_keys(Engine(random_model, tok), entry, kv, atol=1e-4)


def kept(server: Server) -> dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]]:
    """The keys and values of every finished sequence the server keeps: parked in its slot or in the prefix cache."""
    parked = {ids: server.runner.save(slot, len(ids)) for slot, ids in server.scheduler.parked.items()}
    return {**server.runner.prefixes.entries, **parked}


def test_prefix_cache_evicts_least_recently_used(random_model, tok):
    server = Server(random_model, tok, slots=2, prefill_chunk=64, cache_tokens=60, kv_dtype=torch.float32)
    try:
        a, b = tok.encode("a" * 20 + " first chat"), tok.encode("b" * 20 + " second chat")
        ra = server.generate(a, GREEDY)
        server.generate(b, GREEDY)  # both fit: 2 x ~42 positions > 60, so a (the older) is evicted
        assert server.load()["cached_tokens"] <= 60
        again = server.generate(a + ra.ids + tok.encode("!"), GREEDY)
        assert again.timings["prefilled_tokens"] == len(a) + len(ra.ids) + 1  # a was evicted: all prefilled
    finally:
        server.close()
    cache = PrefixCache(100)
    cache.put([1, 2, 3], (torch.zeros(1), torch.zeros(1)))
    cache.put([1, 2, 3, 4, 5], (torch.ones(1), torch.ones(1)))  # holds [1, 2, 3]: the shorter one goes
    assert list(cache.entries) == [(1, 2, 3, 4, 5)] and cache.tokens == 5
    assert cache.longest([1, 2, 3, 9])[0] == 3 and cache.longest([7])[0] == 0


class Events:
    """Events of several requests by name; `done` is set once `expect` of them have ended."""

    def __init__(self, expect: int):
        self.log: list[tuple[str, object]] = []
        self.expect, self.done = expect, threading.Event()

    def of(self, name: str) -> list:
        return [e for n, e in self.log if n == name]

    def listener(self, name: str, then=None):
        def on(event):
            self.log.append((name, event))
            if then is not None:
                then(event)
            if sum(hasattr(e, "finish_reason") for _, e in self.log) == self.expect:
                self.done.set()
        return on


def test_requests_over_the_slots_wait_in_order_and_say_so(random_model, tok):
    server = Server(random_model, tok, slots=1, prefill_chunk=64, kv_dtype=torch.float32)
    ps = prompts(tok, 3)
    events = Events(3)
    try:
        with server._wake:  # hold the scheduler so that all three are queued before it looks
            for i, p in enumerate(ps):
                server.submit(p, GREEDY, listener=events.listener(str(i)))
        assert events.done.wait(60)
    finally:
        server.close()
    logs = {i: events.of(str(i)) for i in range(3)}
    assert logs[0][0] == Started()
    assert logs[1][:2] == [Queued(0), Started()]
    assert logs[2][:3] == [Queued(1), Queued(0), Started()]
    assert all(log[-1].finish_reason == "length" for log in logs.values())


def test_background_requests_wait_for_interactive_ones(random_model, tok):
    server = Server(random_model, tok, slots=1, prefill_chunk=64, kv_dtype=torch.float32)
    ps = prompts(tok, 3)
    events = Events(3)
    try:
        with server._wake:
            for name, p, prio in (("first", ps[0], 0), ("summary", ps[1], 1), ("chat", ps[2], 0)):
                server.submit(p, GREEDY, priority=prio, listener=events.listener(name))
        assert events.done.wait(60)
    finally:
        server.close()
    assert [n for n, e in events.log if isinstance(e, Started)] == ["first", "chat", "summary"]


def test_chunked_prefill_keeps_running_streams_going(random_model, tok):
    """A newcomer's long prompt is prefilled 8 tokens per step, between the running stream's tokens."""
    server = Server(random_model, tok, slots=2, prefill_chunk=8, kv_dtype=torch.float32)
    long_prompt = tok.encode("x" * 120)
    recorder = Events(2)

    def join(event):
        if isinstance(event, str) and len(recorder.of("A")) == 4:  # Started and 3 deltas
            server.submit(long_prompt, GREEDY, listener=recorder.listener("B"))

    try:
        server.submit(tok.encode("short"), GenerationConfig(max_new_tokens=40, ignore_stop_ids=True),
                      listener=recorder.listener("A", then=join))
        assert recorder.done.wait(60)
    finally:
        server.close()
    events = recorder.log
    start = events.index(("B", Started()))
    first_b = next(i for i, (n, e) in enumerate(events) if n == "B" and isinstance(e, str))
    a_between = [e for n, e in events[start:first_b] if n == "A" and isinstance(e, str)]
    assert len(a_between) >= len(long_prompt) // 8 - 1  # A got a token after (almost) every chunk of B
    result_b = next(e for n, e in events if n == "B" and hasattr(e, "finish_reason"))
    assert result_b.ids == full_greedy(random_model, long_prompt, 12)


def test_stop_strings_and_stop_ids_end_only_their_request(tok):
    text = "quick brown"  # every character once: each has one successor
    seq = tok.encode(text) + [tok.encode("<|im_end|>")[0]]
    model = chain_model(tok, seq)
    server = Server(model, tok, slots=2, kv_dtype=torch.float32)
    try:
        prompt = seq[:1]
        a = server.submit(prompt, GenerationConfig(max_new_tokens=40, stop_strings=(" bro",)))
        b = server.submit(prompt, GenerationConfig(max_new_tokens=40))
        ra, rb = _drain(a), _drain(b)
    finally:
        server.close()
    assert (ra.text, ra.finish_reason) == ("uick", "stop_string")
    assert (rb.text, rb.finish_reason) == ("uick brown", "stop")


def test_a_call_runs_in_the_scheduler_between_steps(server, tok):
    ticket = server.submit(prompts(tok, 1)[0], GenerationConfig(max_new_tokens=30, ignore_stop_ids=True))
    future = server.call(lambda: threading.current_thread().name)
    assert future.result(30) == "docent-serve"
    failing = server.call(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(30)
    assert _drain(ticket).finish_reason == "length"  # the stream went on around both


def test_submit_refuses_prompts_that_do_not_fit(server, tok):
    from lm.engine import ContextOverflow

    with pytest.raises(ContextOverflow):
        server.submit(list(range(3, 3 + 256)), GREEDY)
    with pytest.raises(ValueError):
        server.submit([], GREEDY)


def _drain(ticket):
    for _ in ticket:
        pass
    return ticket.result


def test_common_prefix_compares_lists_and_tuples_alike():
    from lm.prefix import common_prefix

    assert common_prefix([1, 2, 3, 4], (1, 2, 9)) == 2  # a list against a tuple: the values decide
    assert common_prefix((1, 2, 3), [1, 2, 3, 4, 5]) == 3 and common_prefix([], [1]) == 0
    long = list(range(1000))
    assert all(common_prefix(long, long[:k] + [-1]) == k for k in (0, 1, 500, 999))


def test_the_runner_writes_a_lone_rows_keys_to_its_slot_before_any_read(random_model, tok):
    """A row decoding alone adds its keys to its float32 mirror only; a copy from its slot (a newcomer that shares
    its text) and a save of the slot (to the prefix cache) read all of them, with nothing synced by the caller."""
    from lm.engine import Decoder
    from lm.runner import ModelRunner
    from lm.scheduler import Request

    runner = ModelRunner(random_model, slots=2, max_len=128, cache_tokens=1000, kv_dtype=torch.float32)
    engine = Engine(random_model, tok)

    def request(prompt: list[int], slot: int) -> Request:
        req = Request(prompt, GREEDY, threading.Event(), lambda e: None, 0, slot, Decoder(tok, prompt, GREEDY, 128))
        req.slot = slot
        return req

    a = request(tok.encode("a lone row"), 0)
    with torch.inference_mode():
        a.decoder.accept(runner.prefill(a, len(a.prompt)))
        for _ in range(5):
            a.decoder.accept(runner.decode_alone(a))
        b = request(a.ids + tok.encode(" and more"), 1)  # all of a's positions are a prefix of b's prompt
        runner.reuse(b, [(a.slot, a.ids)])
        assert (b.pos, b.reused) == (a.pos, a.pos) == (len(a.prompt) + 5, len(a.prompt) + 5)
        assert_engine_keys(engine, tuple(b.ids), runner.save(1, b.pos), atol=1e-4)
        for _ in range(3):
            a.decoder.accept(runner.decode_alone(a))
        assert_engine_keys(engine, tuple(a.ids), runner.save(0, a.pos), atol=1e-4)
