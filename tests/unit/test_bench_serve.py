"""bench/serve.py: llama-batched-bench's output (captured from a real run) becomes the figures ours are compared with."""

from __future__ import annotations

import pytest

from bench.serve import parse_batched_bench

JSONL = """\
0.00.244.069 W load: control-looking token: 128247 '</s>' was not control-type
{"n_kv_max": 512, "n_batch": 2048, "n_ubatch": 512, "flash_attn": -1, "is_pp_shared": 0, "n_gpu_layers": -1, \
"n_threads": 1, "n_threads_batch": 1, "pp": 32, "tg": 16, "pl": 1, "n_kv": 48, "t_pp": 0.175017, "speed_pp": \
182.839386, "t_tg": 0.267241, "speed_tg": 59.871052, "t": 0.442258, "speed": 108.533936}
{"n_kv_max": 512, "n_batch": 2048, "n_ubatch": 512, "flash_attn": -1, "is_pp_shared": 0, "n_gpu_layers": -1, \
"n_threads": 1, "n_threads_batch": 1, "pp": 32, "tg": 16, "pl": 2, "n_kv": 96, "t_pp": 0.324420, "speed_pp": \
197.275131, "t_tg": 0.370588, "speed_tg": 86.349258, "t": 0.695008, "speed": 138.127899}
"""

TABLE = """
llama_batched_bench: n_kv_max = 512, n_batch = 2048, n_ubatch = 512, flash_attn = -1, is_pp_shared = 0, n_threads = 1

|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|    32 |     16 |    1 |     48 |    0.341 |    93.74 |    0.554 |    28.86 |    0.896 |    53.58 |
|    32 |     16 |    2 |     96 |    0.658 |    97.30 |    0.749 |    42.75 |    1.406 |    68.26 |
"""


def test_jsonl_aggregate_counts_new_tokens_over_prefill_and_decode():
    rows = parse_batched_bench(JSONL)
    assert sorted(rows) == [1, 2]
    # N x TG over T (prefill + decode): neither S (which counts the prompt) nor S_TG (which leaves the prefill out)
    assert rows[2]["agg_tok_s"] == pytest.approx(2 * 16 / 0.695008)
    assert rows[2]["decode_tok_s"] == pytest.approx(86.349258)
    assert rows[2]["ttft_s"] == pytest.approx(0.324420)
    assert rows[1]["agg_tok_s"] == pytest.approx(16 / 0.442258)


def test_markdown_table_reads_the_same_columns():
    rows = parse_batched_bench(TABLE)
    assert sorted(rows) == [1, 2]
    assert rows[2] == pytest.approx({"agg_tok_s": 32 / 1.406, "decode_tok_s": 42.75, "ttft_s": 0.658, "total_s": 1.406})
    assert rows[1]["ttft_s"] == pytest.approx(0.341)


def test_no_results_is_empty():
    assert parse_batched_bench("error: failed to load model\n") == {}
