"""A retraining plan sized to the data that exists, with a time estimate from a measured training step.

    options = fit_to_data(TrainingOptions.from_settings(settings.training), n_train, n_heldout)
    refusal = not_enough_data(stats, n_train, n_heldout, options.min_examples)   # None: it can train
    step = await StepTimer().measure(settings, base, options, write_data)      # or measured_by_a_run(...)

Sizing. A run makes `epochs` passes over the training examples (lm.train draws each batch at random, so a
pass is one in expectation), at most `max_steps` steps; the batch is never larger than the training set,
and the held-out evaluation is about one pass over the held-out examples, at most `eval_batches` batches.
Too few examples to learn from and to hold some out for the before/after loss, and the plan says so
instead of offering a run.

Time. The seconds per step come from the last finished run that trained the same base model with the same
batch and block size (lm.train's own ms_per_step), or else from timing three real training steps on the
plan's data in a niced child process (`python -m lm.train`, the very command a run uses, for three steps).
A held-out evaluation batch is a forward pass only, counted as a third of a step.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Settings, TrainingSettings
from bot.db import training as training_db
from bot.db.models import ModelVersion
from bot.services.training.children import ROOT, child_env, child_setup

if TYPE_CHECKING:
    from bot.services.training.service import DataStats, Example

TIMED_STEPS = 3  # steps of lm.train timed for a plan (the first one, slower, is part of it: a cautious figure)
TIMING_TTL_S = 15 * 60  # a timing is reused for this long: an admin who asks again should not wait again
TIMING_TIMEOUT_S = 10 * 60
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


def not_enough_data(stats: DataStats, n_train: int, n_heldout: int, min_examples: int) -> str | None:
    """Why a run cannot train on this data, in an admin's terms; None when it can."""
    n = n_train + n_heldout
    if stats.chats == 0:
        return ("No chat has opted in to training yet, so there is nothing to train on. A chat opts in with "
                "/training on (admins can do it for a group).")
    if n == 0:
        return ("The opted-in chats have no finished exchanges or documents yet, so there is nothing to train "
                "on. Chat with the bot there, or upload documents, and try again.")
    needed = max(2, min_examples)
    if n < needed or n_train < 1 or n_heldout < 1:
        return (f"Not enough data to train on yet: {n} example{'s' if n != 1 else ''}, and a run needs at least "
                f"{needed}. One in ten (at least one) is held out to measure whether the new version is better, "
                "and the rest must be enough to learn from. More exchanges in opted-in chats (/training on) "
                "and their documents add examples.")
    return None


# ------------------------------------------------------------------------------------------- time


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


@dataclass
class StepTime:
    ms: float | None  # None: it could not be measured (basis says why)
    basis: str  # where the figure comes from, for the plan: "as measured by run #3"

    def describe(self) -> str:
        if self.ms is None:
            return self.basis
        per_step = f"{self.ms:.0f} ms" if self.ms < 1000 else f"{self.ms / 1000:.1f}s"
        return f"{per_step} per step, {self.basis}"


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
            return StepTime(ms, f"as measured by run #{notes.get('run_id', '?')}")
    return None


@dataclass
class _Timing:
    ms: float
    at: float = field(default_factory=time.monotonic)


class StepTimer:
    """Times a few real training steps of a plan in a child process, and remembers the figure for a while
    for the same base model and batch shape."""

    def __init__(self, ttl_s: float = TIMING_TTL_S, timeout_s: float = TIMING_TIMEOUT_S):
        self.ttl_s, self.timeout_s = ttl_s, timeout_s
        self._timings: dict[tuple, _Timing] = {}

    async def measure(self, settings: Settings, base: str, o: TrainingOptions,
                      write_data: Callable[[Path], Any]) -> StepTime:
        """Seconds per step of `o` on `base`: `write_data(path)` writes the plan's data file to time on."""
        key = (base, o.batch_size, o.block_size, o.lora_rank, o.threads)
        known = self._timings.get(key)
        if known is not None and time.monotonic() - known.at < self.ttl_s:
            ago = format_duration(time.monotonic() - known.at)
            return StepTime(known.ms, f"timed on {TIMED_STEPS} training steps {ago} ago")
        runs = settings.data_dir / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="plan-", dir=runs) as tmp:  # the data holds conversations
            data = Path(tmp) / "data.jsonl"
            await asyncio.to_thread(write_data, data)
            ms, error = await self._run(settings, base, o, data, Path(tmp) / "out")
        if ms is None:
            return StepTime(None, f"a training step could not be timed: {error}")
        self._timings[key] = _Timing(ms)
        return StepTime(ms, f"timed on {TIMED_STEPS} training steps of this data just now")

    async def _run(self, settings: Settings, base: str, o: TrainingOptions, data: Path,
                   out: Path) -> tuple[float | None, str]:
        args = [sys.executable, "-m", "lm.train", "--mode", "lora", "--base", base, "--data", str(data),
                "--out", str(out), "--steps", str(TIMED_STEPS), "--batch", str(o.batch_size),
                "--block-size", str(o.block_size), "--lr", str(o.learning_rate), "--warmup", "0",
                "--lora-rank", str(o.lora_rank), "--lora-alpha", str(o.lora_alpha), "--eval-interval", "0",
                "--eval-batches", "1", "--log-interval", str(TIMED_STEPS), "--ckpt-interval", "0",
                "--seed", str(o.seed), "--threads", str(o.threads), "--no-progress"]
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=str(ROOT), env=child_env(settings), preexec_fn=child_setup)
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except (TimeoutError, asyncio.CancelledError) as e:
            proc.kill()
            await proc.wait()
            if isinstance(e, asyncio.CancelledError):
                raise
            return None, f"{TIMED_STEPS} steps took longer than {self.timeout_s / 60:.0f} minutes"
        lines = stdout.decode(errors="replace").strip().splitlines()
        try:
            ms = json.loads(lines[-1])["ms_per_step"] if proc.returncode == 0 and lines else None
        except (ValueError, KeyError, TypeError):
            ms = None
        if ms:
            return float(ms), ""
        said = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
        return None, f"lm.train exited with {proc.returncode}" + (f" ({said[-1][-300:]})" if said else "")


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
    refusal: str | None = None  # why there is nothing to run; None when the plan can start
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

    def sizing(self) -> str:
        o, n = self.options, len(self.train)
        epochs = f"{o.epochs_over(n):.1f}".removesuffix(".0")
        text = (f"{o.steps} steps × batch {o.batch_size} ≈ {epochs} epoch{'s' if epochs != '1' else ''} over the "
                f"{n:,} training example{'s' if n != 1 else ''}")
        if o.steps == o.max_steps and o.epochs_over(n) < o.epochs:
            text += f" (capped at max_steps {o.max_steps}; {o.epochs:g} epochs would take more)"
        return text

    def describe(self) -> str:
        s, o = self.stats, self.options
        lines = [
            "Retraining plan",
            f"• Conversations: {s.conversations} from {s.chats} opted-in chat(s), {s.exchanges} exchanges "
            f"({s.liked} rated 👍 first; {s.disliked} rated 👎 left out)",
            f"• Documents: {s.documents} ({s.chunks} chunks, trained as question -> passage examples)",
            f"• Examples: {self.examples} ({len(self.heldout)} held out for the before/after loss), "
            f"{self.tokens:,} tokens" + (f"; {s.dropped} left out (too long or over the cap)" if s.dropped else ""),
        ]
        if self.refusal is not None:
            return "\n".join(lines) + "\n\n" + self.refusal
        lines += [
            f"• LoRA rank {o.lora_rank} on {self.base}: {self.sizing()}, lr {o.learning_rate:g}, "
            f"block {o.block_size}",
            f"• Estimated time: {format_duration(self.est_seconds)} ({self.step.describe()})",
            "• The new version replaces the current model only if its held-out loss is lower."
            if not self.force else "• force: the new version becomes the active model whatever its loss.",
        ]
        return "\n".join(lines)
