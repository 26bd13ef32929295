"""`docent model pull` measures a model's speed once per weights and threads: a pull again (every `make test`)
shows the recorded figures instead of spending a minute measuring them again."""

from __future__ import annotations

import json

from bot.config import Settings
from bot.services.model_catalog import measured_as, model_threads


def _record(path, **changes) -> dict:
    settings = Settings()
    figures = {"weights": settings.model.weights, "threads": model_threads(settings), "decode_tok_s": 40.0,
               "ttft_s": 0.8, "prompt_tokens": 256, "peak_rss_mb": 900, "date": "2026-12-07"} | changes
    path.write_text(json.dumps(figures))
    return figures


def test_figures_measured_with_the_same_weights_and_threads_are_reused(tmp_path):
    path = tmp_path / "measured.json"
    figures = _record(path)
    assert measured_as(path, Settings()) == figures


def test_other_weights_other_threads_or_no_record_mean_measuring_again(tmp_path):
    path = tmp_path / "measured.json"
    assert measured_as(path, Settings()) is None  # never measured
    _record(path, weights="fp32" if Settings().model.weights != "fp32" else "int4")
    assert measured_as(path, Settings()) is None
    _record(path, threads=model_threads(Settings()) + 1)
    assert measured_as(path, Settings()) is None
    path.write_text("{not json")
    assert measured_as(path, Settings()) is None
