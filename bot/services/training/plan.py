"""A retraining plan sized to the data that exists, with a time estimate from a measured training step.

    options = fit_to_data(TrainingOptions.from_settings(settings.training), n_train, n_heldout)
    refusal = not_enough_data(stats, n_train, n_heldout, options.min_examples)   # None: it can train
    step = await measured_by_a_run(session, base, options)   # else runner.StepTimer().measure(...)

Sizing. A run makes `epochs` passes over the training examples (lm.train draws each batch at random, so a
pass is one in expectation), at most `max_steps` steps; the batch is never larger than the training set,
and the held-out evaluation is about one pass over the held-out examples, at most `eval_batches` batches.
Too few examples to learn from and to hold some out for the before/after loss, and the plan says why
(a Shortfall) instead of offering a run.

Time. The seconds per step come from the last finished run that trained the same base model with the same
batch and block size (lm.train's own ms_per_step), or else from timing three real training steps on the
plan's data in a niced child process (`python -m lm.train`, the very command a run uses, for three steps:
runner.StepTimer).
A held-out evaluation batch is a forward pass only, counted as a third of a step.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import TrainingSettings
from bot.db import training as training_db
from bot.db.tables import ModelVersion
from bot.services.training.dataset import DataStats, Example
from bot.telegram import training_texts

EVAL_BATCH_COST = 1 / 3  # a forward pass is about a third of a training step (forward + backward)


@dataclass
class TrainingOptions:
    """How a run trains. Read from [training]; the rest have defaults sized for a 2-core CPU. `steps`,
    `batch_size` and `eval_batches` of a plan's options are fitted to its data (fit_to_data)."""

    epochs: float = 3.0  # passes over the training examples
    max_steps: int = 200
    min_examples: int = 5  # fewer, and a plan refuses: too little to learn from and hold some out
    lora_rank: int = 8
    lora_alpha: float = 16.0
    learning_rate: float = 2e-4
    use_chats_by_default: bool = False
    block_size: int = 384  # tokens per example; longer conversations are split into several examples
    batch_size: int = 4
    eval_batches: int = 8
    max_examples: int = 2000
    threads: int = 0  # torch threads in the children; 0 = torch's default
    seed: int = 1337
    steps: int = 0  # the run's steps: set by fit_to_data

    @classmethod
    def from_settings(cls, training: TrainingSettings) -> TrainingOptions:
        defaults = cls()
        return cls(**{f: getattr(training, f, getattr(defaults, f)) for f in asdict(defaults)})

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> TrainingOptions:
        """Options saved in a run's config; keys of older versions (such as ms_per_step) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in stored.items() if k in names})

    @property
    def warmup(self) -> int:
        return min(20, self.steps // 10)

    @property
    def eval_interval(self) -> int:
        return max(1, self.steps // 4)

    @property
    def evals(self) -> int:
        """Evaluations in one run: the "before" measurement, the periodic ones and the final one."""
        return 1 + self.steps // self.eval_interval + (self.steps % self.eval_interval != 0)

    def epochs_over(self, n_train: int) -> float:
        """Passes over the training examples that `steps` batches make."""
        return self.steps * self.batch_size / n_train if n_train else 0.0


def fit_to_data(o: TrainingOptions, n_train: int, n_heldout: int) -> TrainingOptions:
    """`o` with steps, batch and evaluation batches that fit n_train training and n_heldout held-out examples."""
    batch = max(1, min(o.batch_size, n_train))
    steps = max(1, min(o.max_steps, math.ceil(o.epochs * n_train / batch)))
    eval_batches = max(1, min(o.eval_batches, math.ceil(n_heldout / batch)))
    return replace(o, steps=steps, batch_size=batch, eval_batches=eval_batches)


@dataclass
class Shortfall:
    """Why a run cannot train on the data there is: no chat opted in ("no chats"), the opted-in chats hold
    nothing to train on ("no examples"), or fewer examples than a run needs, or none to hold out ("too few")."""

    reason: str  # "no chats" | "no examples" | "too few"
    examples: int
    needed: int


def not_enough_data(stats: DataStats, n_train: int, n_heldout: int, min_examples: int) -> Shortfall | None:
    """Why a run cannot train on this data; None when it can."""
    n = n_train + n_heldout
    needed = max(2, min_examples)
    if stats.chats == 0:
        return Shortfall("no chats", n, needed)
    if n == 0:
        return Shortfall("no examples", n, needed)
    if n < needed or n_train < 1 or n_heldout < 1:
        return Shortfall("too few", n, needed)
    return None


# ------------------------------------------------------------------------------------------- time


@dataclass
class StepTime:
    ms: float | None  # None: it could not be measured (basis says why)
    basis: str  # where the figure comes from, for the plan: "as measured by run #3"
    replies: int = 0  # replies the bot was writing while the steps were timed: they competed for the cores
    load_per_core: float | None = None  # the machine's 1-minute load average per core after timing


@dataclass(frozen=True)
class PlanProgress:
    """How far /retrain's plan has got: "reading" the chats and documents, or "timing" training steps
    (`done` of `of` finished, `elapsed_s` since the timing child started: the first includes loading the base)."""

    stage: str
    done: int = 0
    of: int = 0
    elapsed_s: float = 0.0


def estimate_seconds(o: TrainingOptions, ms_per_step: float | None) -> float | None:
    """Seconds for a run of `o`: its steps plus every held-out evaluation, "before" included."""
    if ms_per_step is None:
        return None
    return ms_per_step / 1000 * (o.steps + o.evals * o.eval_batches * EVAL_BATCH_COST)


def version_notes(version: ModelVersion) -> dict:
    try:
        return json.loads(version.notes or "{}")
    except ValueError:
        return {}


async def measured_by_a_run(session: AsyncSession, base: str, o: TrainingOptions) -> StepTime | None:
    """The step time lm.train measured in the newest finished run on the same base, batch and block size."""
    for version in reversed(await training_db.list_versions(session)):
        notes = version_notes(version)
        same = (version.base == base and notes.get("batch_size") == o.batch_size
                and notes.get("block_size") == o.block_size)
        if notes.get("ms_per_step") and same:
            ms = float(notes["ms_per_step"])
            return StepTime(ms, training_texts.measured_by_run(notes.get("run_id", "?")))
    return None


# ------------------------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """What a run would train on, and how long, shown to the admin before anything is written."""

    token: str
    base: str
    active: str  # what serves replies now: the configured model or a version directory
    active_version_id: int | None
    train: list[Example]
    heldout: list[Example]
    stats: DataStats
    options: TrainingOptions  # fitted to the data
    step: StepTime | None  # None when the plan is refused (nothing was timed)
    refusal: Shortfall | None = None  # why there is nothing to run; None when the plan can start
    force: bool = False
    created: float = field(default_factory=time.monotonic)
    shown_in: tuple[int, int] | None = None  # (chat id, message id) of the message with its buttons

    @property
    def examples(self) -> int:
        return len(self.train) + len(self.heldout)

    @property
    def tokens(self) -> int:
        return sum(e.tokens for e in self.train) + sum(e.tokens for e in self.heldout)

    @property
    def train_tokens(self) -> int:
        return sum(e.tokens for e in self.train)

    @property
    def ready(self) -> bool:
        return self.refusal is None

    @property
    def est_seconds(self) -> float | None:
        return estimate_seconds(self.options, self.step.ms if self.step else None)
