"""Retraining plans fit the data: steps from epochs over the examples that exist (capped), a batch no larger
than the training set, a refusal in an admin's terms when there is too little, and a time estimate from a
measured step (a failed timing says so instead of guessing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import Settings
from bot.services.training.dataset import DataStats, Example
from bot.services.training.plan import (
    Plan,
    StepTime,
    TrainingOptions,
    estimate_seconds,
    fit_to_data,
    not_enough_data,
)
from bot.services.training.runner import StepTimer
from bot.telegram.training_texts import plan_text, shortfall_text

DEFAULTS = TrainingOptions()  # epochs 3, max_steps 200, batch 4, eval_batches 8, min_examples 5


def examples(n: int) -> list[Example]:
    return [Example([], "conversation", f"c{i}", False, tokens=50) for i in range(n)]


def plan_for(options: TrainingOptions, n_train: int, n_heldout: int, ms: float | None = 8000.0,
             chats: int = 1) -> Plan:
    fitted = fit_to_data(options, n_train, n_heldout)
    stats = DataStats(chats=chats, conversations=n_train + n_heldout, exchanges=n_train + n_heldout)
    refusal = not_enough_data(stats, n_train, n_heldout, options.min_examples)
    step = None if refusal else StepTime(ms, "timed")
    return Plan("t", "base", "base", None, examples(n_train), examples(n_heldout), stats, fitted, step, refusal)


def test_seven_examples_get_a_few_steps_of_epochs_over_them_not_a_fixed_count():
    # the case of the issue: 7 examples (6 to train on, 1 held out) used to get "200 steps × batch 4"
    o = fit_to_data(DEFAULTS, 6, 1)
    assert (o.steps, o.batch_size) == (5, 4)  # ceil(3 epochs × 6 / 4)
    assert o.epochs_over(6) == pytest.approx(20 / 6)
    assert o.eval_batches == 1  # one held-out example: one batch covers it, not eight copies of it
    text = plan_text(plan_for(DEFAULTS, 6, 1))
    assert "5 steps × batch 4 ≈ 3.3 epochs over the 6 training examples" in text and "capped" not in text


def test_the_batch_never_exceeds_the_training_set_and_big_data_is_capped_at_max_steps():
    tiny = fit_to_data(DEFAULTS, 2, 1)
    assert (tiny.steps, tiny.batch_size) == (3, 2)
    one_epoch = fit_to_data(TrainingOptions(epochs=1, batch_size=8), 20, 2)
    assert (one_epoch.steps, one_epoch.batch_size, one_epoch.eval_batches) == (3, 8, 1)
    big = fit_to_data(DEFAULTS, 1800, 200)
    assert (big.steps, big.batch_size, big.eval_batches) == (200, 4, 8)
    assert big.epochs_over(1800) == pytest.approx(800 / 1800)
    text = plan_text(plan_for(DEFAULTS, 1800, 200))
    assert "200 steps × batch 4 ≈ 0.4 epochs over the 1,800 training examples (capped at max_steps 200" in text


def test_the_estimate_counts_steps_and_every_evaluation_at_the_measured_step_time():
    o = fit_to_data(DEFAULTS, 6, 1)  # 5 steps, an evaluation after each (+ "before"), 1 batch each
    assert o.evals == 6
    assert estimate_seconds(o, 8000.0) == pytest.approx(8.0 * (5 + 6 * 1 / 3))
    assert estimate_seconds(o, None) is None
    shown = plan_text(plan_for(DEFAULTS, 6, 1, ms=8000.0))
    assert "Estimated time: 56s (8.0s per step, timed)" in shown
    assert "Estimated time: ? (timed)" in plan_text(plan_for(DEFAULTS, 6, 1, ms=None))


@pytest.mark.parametrize("chats, n_train, n_heldout, says", [
    (0, 0, 0, "No chat has opted in to training yet"),
    (2, 0, 0, "no finished exchanges or documents yet"),
    (1, 3, 1, "Not enough data to train on yet: 4 examples, and a run needs at least 5"),
    (1, 1, 0, "Not enough data to train on yet: 1 example, and a run needs at least 5"),
])
def test_too_little_data_is_refused_with_the_reason_and_no_run_sized(chats, n_train, n_heldout, says):
    stats = DataStats(chats=chats)
    refusal = not_enough_data(stats, n_train, n_heldout, DEFAULTS.min_examples)
    assert refusal is not None and says in shortfall_text(refusal)
    if chats == 0 or n_train + n_heldout:
        assert "/training on" in shortfall_text(refusal)  # what the admin can do about it
    plan = plan_for(DEFAULTS, n_train, n_heldout, chats=chats)
    assert not plan.ready and plan.step is None
    text = plan_text(plan)
    assert says in text and "steps ×" not in text and "Estimated time" not in text


def test_nothing_to_hold_out_is_refused_even_when_the_minimum_allows_it():
    assert not_enough_data(DataStats(chats=1), 1, 0, min_examples=1) is not None  # 2 at the very least
    assert not_enough_data(DataStats(chats=1), 1, 1, min_examples=1) is None
    assert not_enough_data(DataStats(chats=1), 4, 1, min_examples=5) is None


async def test_a_timing_that_fails_says_why_instead_of_guessing(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    timer = StepTimer()
    o = fit_to_data(TrainingOptions(block_size=64), 4, 1)

    def bad_data(path: Path) -> None:
        path.write_text("this is not a JSONL of conversations\n")

    failed = await timer.measure(settings, str(tmp_path / "missing.gguf"), o, bad_data)
    assert failed.ms is None and failed.basis.startswith("a training step could not be timed: lm.train exited with")
    assert not list((settings.data_dir / "runs").iterdir())  # the plan's data file is gone again
    assert not timer._timings  # nothing to reuse
