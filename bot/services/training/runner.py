"""The child processes of training, started one way: the held-out measurement of the model serving now
(`python -m lm.heldout`), the LoRA run itself and the few steps a plan times (`python -m lm.train`).

Every child is niced (replies come first on a small CPU), gets SIGTERM if the bot dies, which makes lm.train
save a resumable checkpoint, and runs without the Telegram token in its environment. A run's files live in
data_dir/runs/<id>/ (RunPaths); lm.train's metrics.jsonl is read as it grows and each record updates the Job.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.config import Settings
from bot.services.training.plan import PlanProgress, StepTime, TrainingOptions
from bot.services.training.report import MetricsTail
from bot.telegram import training_texts

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]  # holds the `bot` and `lm` packages the children import
TIMED_STEPS = 3  # steps of lm.train timed for a plan (the first one, slower, is part of it: a cautious figure)
TIMING_TTL_S = 15 * 60  # a timing is reused for this long: an admin who asks again should not wait again
TIMING_TIMEOUT_S = 10 * 60


# ------------------------------------------------------------------------------------------- spawning


def child_setup() -> None:
    """Runs in the child before exec: lower priority, and SIGTERM when the bot dies (lm.train checkpoints)."""
    with contextlib.suppress(OSError):
        os.nice(10)
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)


def child_env(settings: Settings) -> dict[str, str]:
    """The bot's environment minus DOCENT_TELEGRAM_* (the token), with `bot` and `lm` importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCENT_TELEGRAM")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["DOCENT_CACHE_DIR"] = str(settings.cache_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def spawn(settings: Settings, args: list[str], log_path: Path | None = None) -> asyncio.subprocess.Process:
    """Start a child process: its output is appended to `log_path` after its command line, or piped to the
    caller when there is no log."""
    with open(log_path, "ab") if log_path else contextlib.nullcontext() as log_f:
        if log_f is not None:
            log_f.write(f"$ {' '.join(args)}\n".encode())
            log_f.flush()
        out = log_f if log_f is not None else asyncio.subprocess.PIPE
        return await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, cwd=str(ROOT),
            env=child_env(settings), preexec_fn=child_setup)


def _alive(pid: int | None, marker: str) -> bool:
    """Whether `pid` is still a process whose command line mentions `marker` (pids get reused)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return marker in cmdline


# ------------------------------------------------------------------------------------------- a run


@dataclass
class RunPaths:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data.jsonl"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def metrics(self) -> Path:
        return self.out / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def cancel(self) -> Path:
        return self.root / "cancel"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def before(self) -> Path:
        return self.root / "before.json"

    @property
    def plot(self) -> Path:
        return self.root / "loss.png"


@dataclass
class Job:
    """The run in flight (one at a time): what /train_status and /train_cancel act on."""

    run_id: int
    steps: int
    phase: str = "starting"  # starting | before | training | finishing
    proc: asyncio.subprocess.Process | None = None
    last: dict = field(default_factory=dict)  # the latest metrics record
    cancel_requested: bool = False
    started: float = field(default_factory=time.monotonic)


def _lora_args(base: str, data: Path, out: Path, o: TrainingOptions, *, steps: int, warmup: int,
               eval_interval: int, eval_batches: int, log_interval: int, ckpt_interval: int) -> list[str]:
    return [sys.executable, "-m", "lm.train", "--mode", "lora", "--base", base, "--data", str(data),
            "--out", str(out), "--steps", str(steps), "--batch", str(o.batch_size),
            "--block-size", str(o.block_size), "--lr", str(o.learning_rate), "--warmup", str(warmup),
            "--lora-rank", str(o.lora_rank), "--lora-alpha", str(o.lora_alpha),
            "--eval-interval", str(eval_interval), "--eval-batches", str(eval_batches),
            "--log-interval", str(log_interval), "--ckpt-interval", str(ckpt_interval), "--seed", str(o.seed),
            "--threads", str(o.threads), "--no-progress"]


def train_args(paths: RunPaths, base: str, o: TrainingOptions, resume: bool) -> list[str]:
    """The command line of a run's lm.train."""
    args = _lora_args(base, paths.data, paths.out, o, steps=o.steps, warmup=o.warmup,
                      eval_interval=o.eval_interval, eval_batches=o.eval_batches, log_interval=1,
                      ckpt_interval=max(10, o.steps // 8))
    return args + ["--cancel-file", str(paths.cancel)] + (["--resume"] if resume else [])


async def measure_before(settings: Settings, job: Job, paths: RunPaths, active: str,
                         o: TrainingOptions) -> tuple[float | None, str | None]:
    """The held-out loss of the model serving now on the run's data: (loss, None), or (None, what failed)."""
    args = [sys.executable, "-m", "lm.heldout", "--model", active, "--data", str(paths.data),
            "--block-size", str(o.block_size), "--batch", str(o.batch_size), "--eval-batches", str(o.eval_batches),
            "--seed", str(o.seed), "--threads", str(o.threads), "--out", str(paths.before)]
    job.proc = await spawn(settings, args, paths.log)
    code = await job.proc.wait()
    job.proc = None
    if code == 0 and paths.before.is_file():
        return float(json.loads(paths.before.read_text())["heldout_loss"]), None
    return None, training_texts.child_failed(code, paths.log)


async def train(settings: Settings, job: Job, paths: RunPaths, base: str, o: TrainingOptions, resume: bool,
                started: Callable[[int], Awaitable[None]], progress: Callable[[Job], None]) -> dict | None:
    """Run lm.train: `started(pid)` once it runs, then `progress(job)` for each metrics.jsonl record (in
    job.last); returns this process's summary."""
    tail = MetricsTail(paths.metrics, from_end=True)
    proc = job.proc = await spawn(settings, train_args(paths, base, o, resume), paths.log)
    await started(proc.pid)
    summary = None
    while True:
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=0.5)
            done = True
        except TimeoutError:
            done = False
        for rec in tail.read():
            if rec.get("summary"):
                summary = rec
            else:
                job.last = rec
                progress(job)
        if done:
            break
    job.proc = None
    if summary is None and proc.returncode != 0:
        log.warning("training run %s: lm.train exited with %s", job.run_id, proc.returncode)
    return summary


def ask_to_stop(job: Job, paths: RunPaths) -> None:
    """lm.train sees the cancel file at its next step and saves a resumable checkpoint; the "before"
    measurement is simply terminated."""
    job.cancel_requested = True
    if job.run_id:
        paths.root.mkdir(parents=True, exist_ok=True)
        paths.cancel.touch()
    if job.phase == "before" and job.proc is not None and job.proc.returncode is None:
        job.proc.terminate()


async def stop_child(job: Job, paths: RunPaths) -> None:
    """Stop the job's child now (SIGTERM: lm.train checkpoints), waiting for it a while."""
    proc = job.proc
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        paths.cancel.touch()
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(proc.wait()), 30)


async def stop_stale(pid: int | None, paths: RunPaths) -> None:
    """Stop a trainer a previous bot process left running, if it still runs (it checkpoints on SIGTERM)."""
    if not _alive(pid, str(paths.out)):
        return
    paths.cancel.touch()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(600):  # a checkpoint of a big model takes a while to write
        if not _alive(pid, str(paths.out)):
            break
        await asyncio.sleep(0.1)


# ------------------------------------------------------------------------------------------- a plan's timing


@dataclass
class _Timing:
    ms: float
    at: float = field(default_factory=time.monotonic)


def _load_per_core() -> float | None:
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:  # not available here
        return None


class _Watch:
    """Follows a timing child: its steps done (lines of its metrics file) for `progress`, and the replies the bot
    writes meanwhile."""

    def __init__(self, metrics: Path, progress: Callable[[PlanProgress], None] | None,
                 replies: Callable[[], int] | None, poll_s: float = 0.5):
        self.metrics, self.progress, self.replies, self.poll_s = metrics, progress, replies, poll_s
        self.most_replies = 0

    def _look(self, started: float) -> None:
        if self.replies is not None:
            self.most_replies = max(self.most_replies, self.replies())
        if self.progress is not None:
            try:
                done = sum(1 for line in self.metrics.read_text().splitlines() if line.strip())
            except OSError:  # not written yet: the child is still loading the base model
                done = 0
            self.progress(PlanProgress("timing", min(done, TIMED_STEPS), TIMED_STEPS, time.monotonic() - started))

    async def until_done(self, proc: asyncio.subprocess.Process) -> tuple[bytes, bytes]:
        """proc.communicate(), looking at the child every poll_s meanwhile."""
        started = time.monotonic()
        talk = asyncio.ensure_future(proc.communicate())
        try:
            while not talk.done():
                self._look(started)
                await asyncio.wait({talk}, timeout=self.poll_s)
        finally:
            if not talk.done():
                talk.cancel()
        self._look(started)
        return talk.result()


class StepTimer:
    """Times a few real training steps of a plan in a child process, and remembers the figure for a while
    for the same base model and batch shape."""

    def __init__(self, ttl_s: float = TIMING_TTL_S, timeout_s: float = TIMING_TIMEOUT_S):
        self.ttl_s, self.timeout_s = ttl_s, timeout_s
        self._timings: dict[tuple, _Timing] = {}

    async def measure(self, settings: Settings, base: str, o: TrainingOptions, write_data: Callable[[Path], Any],
                      progress: Callable[[PlanProgress], None] | None = None,
                      replies: Callable[[], int] | None = None) -> StepTime:
        """Seconds per step of `o` on `base`: `write_data(path)` writes the plan's data file to time on.
        `progress` hears of each timed step as it ends; `replies()` says how many replies the bot is writing (the
        most seen while timing goes with the figure: they slow the steps down)."""
        key = (base, o.batch_size, o.block_size, o.lora_rank, o.threads)
        known = self._timings.get(key)
        if known is not None and time.monotonic() - known.at < self.ttl_s:
            return StepTime(known.ms, training_texts.timed_earlier(TIMED_STEPS, time.monotonic() - known.at))
        runs = settings.data_dir / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="plan-", dir=runs) as tmp:  # the data holds conversations
            data = Path(tmp) / "data.jsonl"
            await asyncio.to_thread(write_data, data)
            watch = _Watch(Path(tmp) / "out" / "metrics.jsonl", progress, replies)
            ms, error = await self._run(settings, base, o, data, Path(tmp) / "out", watch)
        if ms is None:
            return StepTime(None, training_texts.not_timed(error))
        self._timings[key] = _Timing(ms)
        return StepTime(ms, training_texts.timed_now(TIMED_STEPS), watch.most_replies,
                        _load_per_core())

    async def _run(self, settings: Settings, base: str, o: TrainingOptions, data: Path,
                   out: Path, watch: _Watch) -> tuple[float | None, str]:
        args = _lora_args(base, data, out, o, steps=TIMED_STEPS, warmup=0, eval_interval=0, eval_batches=1,
                          log_interval=1, ckpt_interval=0)  # a metrics line per step: progress as it goes
        proc = await spawn(settings, args)
        try:
            stdout, stderr = await asyncio.wait_for(watch.until_done(proc), self.timeout_s)
        except (TimeoutError, asyncio.CancelledError) as e:
            proc.kill()
            await proc.wait()
            if isinstance(e, asyncio.CancelledError):
                raise
            return None, training_texts.timing_too_slow(TIMED_STEPS, self.timeout_s)
        lines = stdout.decode(errors="replace").strip().splitlines()
        try:
            ms = json.loads(lines[-1])["ms_per_step"] if proc.returncode == 0 and lines else None
        except (ValueError, KeyError, TypeError):
            ms = None
        if ms:
            return float(ms), ""
        said = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
        return None, training_texts.trainer_exited(proc.returncode, said[-1][-300:] if said else "")
