"""Retraining the chat model on what the bot has seen, from a plan to a promoted model version.

    plan = await service.plan()                 # data from SQL, sized to it, timed (training_plan); nothing written
    run = await service.start(plan, admin_id)   # a training_runs row + data.jsonl in data_dir/runs/<id>/
    outcome = await service.run(run.id, progress=print)   # child processes; metrics -> progress lines

Data. Conversations of the chats that opted in (chat_settings.allow_training, default
`training.use_chats_by_default`) become chat examples: consecutive user/assistant exchanges under the chat's
system prompt, packed up to the block size. A reply whose net feedback is negative (👎) is left out together
with its question, and the conversation is cut there so no later example carries it in its context. Examples
holding a 👍 reply come first, so the example cap keeps them. The chats' documents become chat examples too
("What does DOC (page P) say about HEADING?" -> the chunk's text): `lm.train` reads one format per run, and
with the loss only on the answer this is continued pre-training on the documents' text, tied to a prompt
that names them. The held-out examples (the last ones in the file, where `lm.train` takes them from, and
exactly as many as it takes) are those with the lowest hash of their conversation or chunk id: not the
newest or the liked ones, and mostly the same from run to run as the data grows.

Run. A child process (`python -m bot.services.training.service heldout`) measures the active model's held-out loss
on exactly the batches `lm.train` evaluates on ("before"); then `python -m lm.train --mode lora` trains on
top of the configured base model, writing metrics.jsonl, which is read as it grows for the status line.
Both children are niced (replies come first on a small CPU) and get SIGTERM if the bot dies, which makes
lm.train save a resumable checkpoint. A finished run's directory is renamed into data_dir/versions/ (one
atomic step, so a version directory is always complete) before its model_versions row is written, and it
becomes the active model only when its held-out loss beats the active model's on the same examples (or the
admin forced it); the swap happens without a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.config import Settings
from bot.db import training as training_db
from bot.db.models import ModelVersion, TrainingRun
from bot.services.training.children import ROOT, child_env, child_setup
from bot.services.training.plan import (
    Plan,
    StepTime,
    StepTimer,
    TrainingOptions,
    fit_to_data,
    format_duration,
    measured_by_a_run,
    not_enough_data,
)

log = logging.getLogger(__name__)

PLAN_TTL_S = 15 * 60
DOCUMENT_QUESTION = "What does {doc}{page} say{about}?"


# ------------------------------------------------------------------------------------------- data


@dataclass
class Example:
    messages: list[dict]
    source: str  # "conversation" | "document"
    key: str  # what the held-out choice hashes: "c<conversation id>" or "d<chunk id>"
    liked: bool
    tokens: int
    order: int = 0  # position within its key (segments of one conversation)


@dataclass
class DataStats:
    chats: int = 0
    conversations: int = 0
    exchanges: int = 0
    liked: int = 0  # 👍 replies kept
    disliked: int = 0  # 👎 replies left out
    documents: int = 0
    chunks: int = 0
    dropped: int = 0  # examples with no answer token inside the block size, or over the cap


def _render_len(tokenizer, messages: list[dict]) -> int:
    return len(tokenizer.render_chat(messages, add_generation_prompt=False)[0])


def _fits(tokenizer, messages: list[dict], block_size: int) -> int:
    """Tokens of the example as lm.train will see it, or 0 when it would drop it (no answer token left)."""
    from lm.data import chat_examples

    out = chat_examples([messages], tokenizer, block_size)
    return len(out[0][0]) if out else 0


def conversation_examples(turns: list[training_db.Turn], prompts: dict[int, str], default_prompt: str, tokenizer,
                          block_size: int, stats: DataStats) -> list[Example]:
    """Clean user -> assistant exchanges, cut at 👎 replies and at gaps, packed into examples of at most
    block_size + 1 tokens under the chat's system prompt."""
    out: list[Example] = []

    def emit(conv_id: int, chat_id: int, pairs: list[tuple[training_db.Turn, training_db.Turn]]) -> None:
        system = {"role": "system", "content": prompts.get(chat_id, default_prompt)}
        current: list[dict] = []
        liked = False
        for user, reply in pairs:
            exchange = [{"role": "user", "content": user.text}, {"role": "assistant", "content": reply.text}]
            if current and _render_len(tokenizer, [system, *current, *exchange]) > block_size + 1:
                close(conv_id, [system, *current], liked)
                current, liked = [], False
            current += exchange
            liked |= reply.score > 0
        if current:
            close(conv_id, [system, *current], liked)

    def close(conv_id: int, messages: list[dict], liked: bool) -> None:
        tokens = _fits(tokenizer, messages, block_size)
        if not tokens:
            stats.dropped += 1
            return
        order = sum(e.key == f"c{conv_id}" for e in out)
        out.append(Example(messages, "conversation", f"c{conv_id}", liked, tokens, order))

    conversations: set[int] = set()
    for conv_id, group in groupby(turns, key=lambda t: t.conversation_id):
        msgs = list(group)
        pairs: list[tuple[training_db.Turn, training_db.Turn]] = []
        i = 0
        while i < len(msgs):
            user, reply = msgs[i], msgs[i + 1] if i + 1 < len(msgs) else None
            clean = (user.role == "user" and user.status == "complete" and user.text.strip() and reply is not None
                     and reply.role == "assistant" and reply.status == "complete" and reply.text.strip())
            if not clean:
                # an unanswered question or a failed/cut-off reply: what follows lost part of its context
                emit(conv_id, user.chat_id, pairs)
                pairs, i = [], i + 1
                continue
            if reply.score < 0:
                stats.disliked += 1
                emit(conv_id, user.chat_id, pairs)
                pairs = []
            else:
                pairs.append((user, reply))
                stats.exchanges += 1
                stats.liked += reply.score > 0
                conversations.add(conv_id)
            i += 2
        emit(conv_id, msgs[0].chat_id, pairs)
    stats.conversations = len(conversations)
    return out


def document_examples(chunks: list[training_db.ChunkRow], prompts: dict[int, str], default_prompt: str, tokenizer,
                      block_size: int, stats: DataStats) -> list[Example]:
    out = []
    for c in chunks:
        question = DOCUMENT_QUESTION.format(doc=c.document, page=f" (page {c.page})" if c.page else "",
                                            about=f" about {c.heading}" if c.heading else "")
        messages = [{"role": "system", "content": prompts.get(c.chat_id, default_prompt)},
                    {"role": "user", "content": question}, {"role": "assistant", "content": c.text}]
        tokens = _fits(tokenizer, messages, block_size)
        if tokens:
            out.append(Example(messages, "document", f"d{c.chunk_id}", False, tokens))
        else:
            stats.dropped += 1
    stats.documents = len({c.document_id for c in chunks})
    stats.chunks = len(chunks)
    return out


def _stable_rank(e: Example) -> tuple[str, int]:
    return hashlib.sha256(e.key.encode()).hexdigest(), e.order


def arrange(conversations: list[Example], documents: list[Example], max_examples: int,
            stats: DataStats) -> tuple[list[Example], list[Example]]:
    """(train, held-out): 👍 first, then the newest conversations, then documents, capped; the held-out
    count is exactly what lm.data.split_examples takes from the end of the file."""
    from lm.data import split_examples

    newest = sorted(conversations, key=lambda e: (-int(e.key[1:]), e.order))
    ranked = [e for e in newest if e.liked] + [e for e in newest if not e.liked] + documents
    stats.dropped += max(0, len(ranked) - max_examples)
    ranked = ranked[:max_examples]
    n_val = len(split_examples(list(range(len(ranked))))[1])
    held = set(map(id, sorted(ranked, key=_stable_rank)[:n_val]))
    return [e for e in ranked if id(e) not in held], [e for e in ranked if id(e) in held]


def write_jsonl(path: Path, examples: list[Example]) -> Path:
    """The data file lm.train reads ({"messages": [...]} per line), written atomically."""
    from lm.checkpoint import atomic_write_text

    return atomic_write_text(path, "".join(json.dumps({"messages": e.messages}, ensure_ascii=False) + "\n"
                                           for e in examples))


# ------------------------------------------------------------------------------------------- runs


def format_loss(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "?"


def should_promote(after: float | None, before: float | None, force: bool = False) -> bool:
    """The promotion rule: strictly lower held-out loss than the active model on the same examples."""
    if force:
        return after is not None
    return after is not None and before is not None and after < before


class MetricsTail:
    """The JSON records appended to a metrics.jsonl since the last read (a half-written line waits)."""

    def __init__(self, path: Path, from_end: bool = False):
        self.path = Path(path)
        self.offset = self.path.stat().st_size if from_end and self.path.exists() else 0
        self._partial = b""

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                if line.strip():
                    out.append(json.loads(line))
        return out


def read_metrics(path: Path) -> list[dict]:
    return MetricsTail(path).read()


def plot_loss_curve(records: list[dict], path: Path, before: float | None = None, title: str = "") -> Path:
    """Training and held-out loss per step as a PNG (matplotlib's Agg canvas: no display, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [r for r in records if not r.get("summary") and "loss" in r]
    evals = [r for r in steps if "eval_loss" in r]
    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1.2, label="training loss")
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="held-out loss")
    if before is not None:
        ax.axhline(before, ls="--", color="gray", label=f"held-out before ({before:.3f})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


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

    def describe(self) -> str:
        if self.phase == "before":
            return f"Run #{self.run_id}: measuring the current model's held-out loss…"
        if self.phase != "training" or not self.last:
            return f"Run #{self.run_id}: {'loading the base model' if self.phase == 'training' else self.phase}…"
        r = self.last
        text = f"Run #{self.run_id}: step {r['step']}/{self.steps} · loss {r['loss']:.3f}"
        if "eval_loss" in r:
            text += f" · held-out {r['eval_loss']:.3f}"
        return text + f" · ETA {format_duration(r.get('eta_s'))}"


@dataclass
class RunOutcome:
    run_id: int
    status: str  # succeeded | resumable | cancelled | failed
    before: float | None = None
    after: float | None = None
    version: ModelVersion | None = None
    promoted: bool = False
    forced: bool = False
    plot: Path | None = None
    steps: int = 0
    step: int = 0
    note: str = ""

    def describe(self) -> str:
        head = {"succeeded": "finished", "resumable": "stopped; resume it with /retrain resume",
                "cancelled": "cancelled", "failed": "failed"}[self.status]
        lines = [f"Training run #{self.run_id} {head} (step {self.step}/{self.steps})."]
        if self.before is not None or self.after is not None:
            lines.append(f"Held-out loss: before {format_loss(self.before)}, after {format_loss(self.after)}.")
        if self.version is not None:
            if self.promoted:
                why = " (forced)" if self.forced and not should_promote(self.after, self.before) else ""
                lines.append(f"Version #{self.version.id} ({self.version.name}) is now the active model{why}.")
            else:
                lines.append(f"Version #{self.version.id} ({self.version.name}) was saved but not activated: "
                             "its held-out loss is not lower. Use /rollback "
                             f"{self.version.id} to use it anyway.")
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


def _alive(pid: int | None, marker: str) -> bool:
    """Whether `pid` is still a process whose command line mentions `marker` (pids get reused)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return marker in cmdline


def _now() -> datetime:
    return datetime.now(UTC)


class TrainingBusy(RuntimeError):
    pass


class TrainingService:
    """Plans, runs, watches and cancels training runs, and switches model versions."""

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession], models,
                 options: TrainingOptions | None = None, timer: StepTimer | None = None):
        self.settings = settings
        self.sessions = sessions
        self.models = models
        self.options = options or TrainingOptions.from_settings(settings.training)
        self.job: Job | None = None
        self.task: asyncio.Task | None = None
        self._plans: dict[str, Plan] = {}
        self._switch = asyncio.Lock()
        self._tokenizers: dict[str, tuple[Any, int | None]] = {}
        self.timer = timer or StepTimer()  # plans time training steps; a timing is reused for a while

    # ---------------------------------------------------------------- paths and names

    @property
    def runs_dir(self) -> Path:
        return self.settings.data_dir / "runs"

    @property
    def versions_dir(self) -> Path:
        return self.settings.data_dir / "versions"

    def paths(self, run_id: int) -> RunPaths:
        return RunPaths(self.runs_dir / str(run_id))

    @property
    def busy(self) -> bool:
        return self.job is not None

    async def active(self) -> tuple[str, int | None]:
        """(name or path, version id) of the model that should be serving replies."""
        async with self.sessions() as s:
            version = await training_db.active_version(s)
        return (version.path, version.id) if version else (self.settings.model.name, None)

    # ---------------------------------------------------------------- plan

    def _base_info(self, name: str) -> tuple[Any, int | None]:
        """The base model's tokenizer and context length, without loading its weights."""
        if name not in self._tokenizers:
            from lm import hub
            from lm.tokenizer import Tokenizer

            path = Path(name).expanduser()
            if path.is_dir():
                cfg = path / "config.json"
                ctx = json.loads(cfg.read_text()).get("max_seq_len") if cfg.is_file() else None
                self._tokenizers[name] = (Tokenizer.from_file(path), ctx)
            else:
                from lm.gguf import read_metadata

                meta = read_metadata(hub.resolve(name, self.settings.cache_dir))
                ctx = meta.get(f"{meta.get('general.architecture')}.context_length")
                self._tokenizers[name] = (Tokenizer.from_gguf(meta), int(ctx) if ctx else None)
        return self._tokenizers[name]

    def block_size(self, context: int | None) -> int:
        return min(self.options.block_size, context) if context else self.options.block_size

    async def step_time(self, base: str, o: TrainingOptions, examples: list[Example]) -> StepTime:
        """Seconds per step of `o`: measured by an earlier run with the same shape, else timed on `examples`."""
        async with self.sessions() as s:
            known = await measured_by_a_run(s, base, o)
        return known or await self.timer.measure(self.settings, base, o, lambda path: write_jsonl(path, examples))

    async def plan(self, force: bool = False) -> Plan:
        """Everything an admin needs to decide: the data, a run sized to it and its measured duration, or why
        there is too little to train on. Nothing is stored. Raises ValueError when the base model's tokenizer
        cannot be read."""
        self._expire_plans()
        o = self.options
        base = self.settings.model.name
        active, active_id = await self.active()
        async with self.sessions() as s:
            chats = await training_db.training_chats(s, o.use_chats_by_default)
            prompts = await training_db.system_prompts(s, chats)
            turns = await training_db.conversation_turns(s, chats)
            chunks = await training_db.training_chunks(s, chats)
        tokenizer, ctx = await asyncio.to_thread(self._base_info, base)
        stats = DataStats(chats=len(chats))
        block = self.block_size(ctx)
        default = self.settings.model.system_prompt

        def build() -> tuple[list[Example], list[Example]]:
            convs = conversation_examples(turns, prompts, default, tokenizer, block, stats)
            docs = document_examples(chunks, prompts, default, tokenizer, block, stats)
            return arrange(convs, docs, o.max_examples, stats)

        train, heldout = await asyncio.to_thread(build)
        fitted = replace(fit_to_data(o, len(train), len(heldout)), block_size=block)
        refusal = not_enough_data(stats, len(train), len(heldout), o.min_examples)
        step = None if refusal else await self.step_time(base, fitted, train + heldout)
        plan = Plan(secrets.token_hex(4), base, active, active_id, train, heldout, stats, fitted, step, refusal,
                    force)
        self._plans[plan.token] = plan
        return plan

    def _expire_plans(self) -> None:
        now = time.monotonic()
        for token in [t for t, p in self._plans.items() if now - p.created > PLAN_TTL_S]:
            del self._plans[token]

    def take_plan(self, token: str) -> Plan | None:
        """The plan an admin confirmed (each plan starts at most one run)."""
        self._expire_plans()
        return self._plans.pop(token, None)

    def drop_plan(self, token: str) -> bool:
        return self._plans.pop(token, None) is not None

    def drop_plans(self) -> list[Plan]:
        """Every open plan, dropped: their buttons start nothing from now on."""
        plans, self._plans = list(self._plans.values()), {}
        return plans

    # ---------------------------------------------------------------- start, run, cancel

    async def start(self, plan: Plan, requested_by: int | None) -> TrainingRun:
        """Create the run row and its data file; the run is reserved (busy) until `run` ends it."""
        if self.busy:
            raise TrainingBusy(f"run #{self.job.run_id} is still in progress")
        if not plan.ready:
            raise ValueError(plan.refusal)
        self.job = Job(run_id=0, steps=plan.options.steps)
        try:
            async with self.sessions() as s:
                run = await training_db.create_run(s, mode="lora", requested_by=requested_by,
                                         base_version_id=plan.active_version_id, config={
                                             "base": plan.base, "active": plan.active, "force": plan.force,
                                             "options": asdict(plan.options), "examples": plan.examples,
                                             "heldout": len(plan.heldout), "tokens": plan.tokens,
                                             "train_tokens": plan.train_tokens, "stats": asdict(plan.stats)})
            self.job.run_id = run.id
            paths = self.paths(run.id)
            try:
                paths.root.mkdir(parents=True, exist_ok=True)
                await asyncio.to_thread(write_jsonl, paths.data, plan.train + plan.heldout)
            except OSError as e:
                async with self.sessions() as s:
                    await training_db.update_run(s, run.id, status="failed", finished_at=_now(), error=f"data export: {e}")
                raise
            return run
        except BaseException:
            self.job = None
            raise

    async def resumable(self) -> TrainingRun | None:
        """The latest run that can continue from its checkpoint."""
        async with self.sessions() as s:
            for run in await training_db.list_runs(s, limit=50):
                if run.status == "resumable" and self.paths(run.id).checkpoint.is_file():
                    return run
        return None

    async def reserve(self, run: TrainingRun) -> None:
        """Mark a resumable run as this process's job before `run(..., resume=True)`."""
        if self.busy:
            raise TrainingBusy(f"run #{self.job.run_id} is still in progress")
        self.job = Job(run_id=run.id, steps=int(run.config.get("options", {}).get("steps", self.options.steps)))

    def launch(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """Run `work` (which awaits `run`) as a task of the event loop, not of the Application: a run can last
        hours and must not hold up the Application's shutdown."""
        self.task = asyncio.get_running_loop().create_task(work)
        self.task.add_done_callback(_log_failure)
        return self.task

    async def run(self, run_id: int, progress: Callable[[str], None] = lambda text: None,
                  resume: bool = False) -> RunOutcome:
        """Measure "before", train in a child process, then register (and maybe promote) the version."""
        if self.job is None or self.job.run_id != run_id:
            raise RuntimeError(f"run #{run_id} was not started or reserved by this service")
        job, paths = self.job, self.paths(run_id)
        async with self.sessions() as s:
            run = await training_db.get_run(s, run_id)
        cfg = run.config
        options = TrainingOptions.from_stored(cfg["options"])
        outcome = RunOutcome(run_id, "failed", steps=options.steps, forced=bool(cfg.get("force")))
        try:
            paths.cancel.unlink(missing_ok=True)
            async with self.sessions() as s:
                await training_db.update_run(s, run_id, status="running", started_at=run.started_at or _now(),
                                   log_path=str(paths.log), checkpoint_path=str(paths.checkpoint), error=None)
            before = run.heldout_loss_before
            if before is None and not job.cancel_requested:
                job.phase = "before"
                progress(job.describe())
                before, err = await self._measure_before(job, paths, cfg["active"], options)
                if before is not None:
                    async with self.sessions() as s:
                        await training_db.update_run(s, run_id, heldout_loss_before=before)
                elif err and not job.cancel_requested:
                    outcome.note = f"The current model's held-out loss could not be measured ({err})."
            outcome.before = before
            summary = None
            if not job.cancel_requested:
                job.phase = "training"
                progress(job.describe())
                summary = await self._train(job, paths, cfg["base"], options, resume, progress)
            job.phase = "finishing"
            await self._finish(run_id, cfg, options, paths, summary, outcome)
        except asyncio.CancelledError:
            await self._stop_child(job)
            await self._settle(run_id, paths, outcome, "the bot stopped during the run")
            raise
        except Exception:
            log.exception("training run %s failed", run_id)
            await self._stop_child(job)
            await self._settle(run_id, paths, outcome, "The run failed on the bot's side; the bot's log has the details.")
        finally:
            self.job = None
        return outcome

    async def _spawn(self, job: Job, args: list[str], log_path: Path) -> asyncio.subprocess.Process:
        with open(log_path, "ab") as log_f:
            log_f.write(f"$ {' '.join(args)}\n".encode())
            log_f.flush()
            job.proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.DEVNULL, stdout=log_f, stderr=log_f, cwd=str(ROOT),
                env=child_env(self.settings), preexec_fn=child_setup)
        return job.proc

    async def _measure_before(self, job: Job, paths: RunPaths, active: str,
                              o: TrainingOptions) -> tuple[float | None, str | None]:
        args = [sys.executable, "-m", "bot.services.training.service", "heldout", "--model", active, "--data",
                str(paths.data), "--block-size", str(o.block_size), "--batch", str(o.batch_size),
                "--eval-batches", str(o.eval_batches), "--seed", str(o.seed), "--threads", str(o.threads),
                "--out", str(paths.before)]
        proc = await self._spawn(job, args, paths.log)
        code = await proc.wait()
        job.proc = None
        if code == 0 and paths.before.is_file():
            return float(json.loads(paths.before.read_text())["heldout_loss"]), None
        return None, f"exit code {code}; see {paths.log}"

    def train_args(self, paths: RunPaths, base: str, o: TrainingOptions, resume: bool) -> list[str]:
        args = [sys.executable, "-m", "lm.train", "--mode", "lora", "--base", base, "--data", str(paths.data),
                "--out", str(paths.out), "--steps", str(o.steps), "--batch", str(o.batch_size),
                "--block-size", str(o.block_size), "--lr", str(o.learning_rate), "--warmup", str(o.warmup),
                "--lora-rank", str(o.lora_rank), "--lora-alpha", str(o.lora_alpha),
                "--eval-interval", str(o.eval_interval), "--eval-batches", str(o.eval_batches),
                "--log-interval", "1", "--ckpt-interval", str(max(10, o.steps // 8)), "--seed", str(o.seed),
                "--threads", str(o.threads), "--cancel-file", str(paths.cancel), "--no-progress"]
        return args + (["--resume"] if resume else [])

    async def _train(self, job: Job, paths: RunPaths, base: str, o: TrainingOptions, resume: bool,
                     progress: Callable[[str], None]) -> dict | None:
        """Run lm.train, turning metrics.jsonl lines into progress; returns this process's summary."""
        tail = MetricsTail(paths.metrics, from_end=True)
        proc = await self._spawn(job, self.train_args(paths, base, o, resume), paths.log)
        async with self.sessions() as s:
            await training_db.update_run(s, job.run_id, pid=proc.pid)
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
                    progress(job.describe())
            if done:
                break
        job.proc = None
        if summary is None and proc.returncode != 0:
            log.warning("training run %s: lm.train exited with %s", job.run_id, proc.returncode)
        return summary

    async def cancel(self) -> int | None:
        """Ask the run in flight to stop: lm.train sees the cancel file at its next step and saves a
        resumable checkpoint; the "before" measurement is simply terminated. Returns the run id."""
        job = self.job
        if job is None:
            return None
        job.cancel_requested = True
        paths = self.paths(job.run_id)
        if job.run_id:
            paths.root.mkdir(parents=True, exist_ok=True)
            paths.cancel.touch()
        if job.phase == "before" and job.proc is not None and job.proc.returncode is None:
            job.proc.terminate()
        return job.run_id

    async def shutdown(self, timeout: float = 120.0) -> None:
        """Stop a run in flight cleanly (checkpoint, row "resumable") before the bot exits."""
        if self.task is None or self.task.done():
            return
        await self.cancel()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self.task), timeout)

    async def _stop_child(self, job: Job) -> None:
        proc = job.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.paths(job.run_id).cancel.touch()
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(proc.wait()), 30)

    async def _settle(self, run_id: int, paths: RunPaths, outcome: RunOutcome, error: str) -> None:
        """A run that ended without a model: resumable when a checkpoint exists, else failed."""
        outcome.status = "resumable" if paths.checkpoint.is_file() else "failed"
        outcome.note = outcome.note or error
        with contextlib.suppress(Exception):
            async with self.sessions() as s:
                await training_db.update_run(s, run_id, status=outcome.status, error=error,
                                   finished_at=_now() if outcome.status == "failed" else None)

    async def _finish(self, run_id: int, cfg: dict, o: TrainingOptions, paths: RunPaths, summary: dict | None,
                      outcome: RunOutcome) -> None:
        job = self.job
        records = read_metrics(paths.metrics)
        done = [r for r in records if not r.get("summary") and "loss" in r]
        outcome.step = summary["step"] if summary else (done[-1]["step"] if done else 0)
        if done:
            outcome.plot = await asyncio.to_thread(plot_loss_curve, records, paths.plot, outcome.before,
                                                   f"Training run #{run_id}")
        if summary is None or summary.get("status") != "done":
            if job is not None and job.cancel_requested:
                outcome.status = "resumable" if paths.checkpoint.is_file() else "cancelled"
                async with self.sessions() as s:
                    await training_db.update_run(s, run_id, status=outcome.status, finished_at=_now(),
                                       error="cancelled by an admin")
                return
            tail = paths.log.read_text(errors="replace").strip().splitlines()[-3:] if paths.log.is_file() else []
            await self._settle(run_id, paths, outcome, "training process ended without finishing: "
                               + " | ".join(tail)[-500:])
            return
        outcome.after = summary.get("val_loss")
        target = self.versions_dir / f"run-{run_id}"
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.replace(paths.out, target)  # one rename: the version directory appears complete or not at all
        notes = {"run_id": run_id, "steps": summary.get("step"), "ms_per_step": summary.get("ms_per_step"),
                 "batch_size": o.batch_size, "block_size": o.block_size, "examples": cfg.get("examples"),
                 "heldout_loss_before": outcome.before, "train_loss": summary.get("train_loss")}
        async with self.sessions() as s:
            version = await training_db.add_version(s, name=f"run-{run_id}", base=cfg["base"], path=str(target),
                                          data_size=cfg.get("train_tokens"), heldout_loss=outcome.after,
                                          notes=json.dumps(notes))
        outcome.version = version
        if should_promote(outcome.after, outcome.before, bool(cfg.get("force"))):
            try:
                await self.activate(version.id)
                outcome.promoted = True
            except Exception:
                log.exception("could not activate version %s", version.id)
                outcome.note = "The new version could not be loaded, so the current model stays (see the bot's log)."
        outcome.status = "succeeded"
        async with self.sessions() as s:
            await training_db.update_run(s, run_id, status="succeeded", finished_at=_now(), result_version_id=version.id,
                               heldout_loss_after=outcome.after, checkpoint_path=None)
        async with self.sessions() as s:
            outcome.version = await training_db.get_version(s, version.id)

    # ---------------------------------------------------------------- versions

    async def versions(self) -> list[ModelVersion]:
        async with self.sessions() as s:
            return await training_db.list_versions(s)

    async def runs(self, limit: int = 5) -> list[TrainingRun]:
        async with self.sessions() as s:
            return await training_db.list_runs(s, limit)

    async def activate(self, version_id: int | None) -> ModelVersion | None:
        """Serve a version (None: the configured model). It is loaded first, so one that does not load never
        becomes active; replies already streaming finish on the old model. Raises ValueError (a message for the
        admin) for an unknown id or missing files, RuntimeError (the cause chained) when the model does not load."""
        async with self._switch:
            if version_id is None:
                path = self.settings.model.name
            else:
                async with self.sessions() as s:
                    version = await training_db.get_version(s, version_id)
                if version is None:
                    raise ValueError(f"There is no model version {version_id}. See /models.")
                if not Path(version.path).is_dir():
                    log.warning("version %s's directory %s is missing", version_id, version.path)
                    raise ValueError(f"Version #{version_id}'s files are missing on the server, so it cannot be "
                                     "served; the current model stays active. The bot's log names the folder.")
                path = version.path
            try:
                await self.models.swap(path, version_id)
            except Exception as e:  # a damaged file's ValueError (bad JSON) must not pass for a bad argument
                raise RuntimeError(f"could not load {path}") from e
            async with self.sessions() as s:
                return await training_db.set_active(s, version_id)

    # ---------------------------------------------------------------- start-up

    async def recover(self) -> list[tuple[int, str]]:
        """Runs a previous bot process left unfinished: a live trainer is stopped (it checkpoints), then each
        becomes "resumable" when its checkpoint exists and "failed" otherwise. Returns (run id, status)."""
        async with self.sessions() as s:
            runs = await training_db.unfinished_runs(s)
        changed = []
        for run in runs:
            if self.job is not None and self.job.run_id == run.id:
                continue  # ours, in flight
            paths = self.paths(run.id)
            if run.status == "resumable" and paths.checkpoint.is_file():
                continue
            if _alive(run.pid, str(paths.out)):
                paths.cancel.touch()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(run.pid, signal.SIGTERM)
                for _ in range(600):  # a checkpoint of a big model takes a while to write
                    if not _alive(run.pid, str(paths.out)):
                        break
                    await asyncio.sleep(0.1)
            status = "resumable" if paths.checkpoint.is_file() else "failed"
            error = {"resumable": "the bot stopped during the run; it can continue from its checkpoint",
                     "failed": "the training process ended without a model or a checkpoint"}[status]
            if run.status == "resumable":
                error = "its checkpoint is gone"
            async with self.sessions() as s:
                await training_db.update_run(s, run.id, status=status, error=error,
                                   finished_at=_now() if status == "failed" else None)
            changed.append((run.id, status))
        return changed


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("training task failed", exc_info=task.exception())


async def restore_active_model(runtime) -> ModelVersion | None:
    """Call once at bot start (post_init): settle runs a previous process left unfinished, then load the
    active version from SQL instead of the configured model. A version that fails to load is logged and
    the configured model serves; SQL is left as it is for an admin to /rollback."""
    service = runtime.extras.get("training")
    if service is None:
        service = runtime.extras["training"] = TrainingService(runtime.settings, runtime.sessions, runtime.models)
    for run_id, status in await service.recover():
        log.warning("training run %s was left unfinished; it is now %s", run_id, status)
    async with runtime.sessions() as s:
        version = await training_db.active_version(s)
    if version is None:
        return None
    try:
        await runtime.models.swap(version.path, version.id)
    except Exception:
        log.exception("could not load the active model version %s (%s); serving %s", version.id, version.path,
                      runtime.settings.model.name)
        return None
    return version


# ------------------------------------------------------------------------------------------- child: held-out loss


def heldout_loss(model: str, data: Path, block_size: int, batch_size: int, eval_batches: int, seed: int,
                 threads: int = 0) -> float:
    """`model`'s loss on the held-out batches lm.train evaluates on for this data file and these settings
    (same split, same seeded batches), so "before" and lm.train's final val_loss compare like for like."""
    import torch

    from lm import checkpoint as ckpt
    from lm.data import read_chat_jsonl
    from lm.train import TrainConfig, build_sources, evaluate

    if threads:
        torch.set_num_threads(threads)
    net, tokenizer, _ = ckpt.load_base(model)
    cfg = TrainConfig(mode="lora", base=model, data=str(data), batch_size=batch_size, seed=seed,
                      eval_batches=eval_batches, block_size=min(block_size, net.config.max_seq_len))
    _, val = build_sources(cfg, tokenizer, None, read_chat_jsonl(Path(data)), Path(data).parent, 0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return evaluate(net.to(device), val, eval_batches, device, False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bot.services.training.service")
    sub = p.add_subparsers(dest="command", required=True)
    h = sub.add_parser("heldout", help="a model's held-out loss on a run's data, as lm.train measures it")
    h.add_argument("--model", required=True)
    h.add_argument("--data", required=True, type=Path)
    h.add_argument("--block-size", type=int, default=384)
    h.add_argument("--batch", type=int, default=4)
    h.add_argument("--eval-batches", type=int, default=8)
    h.add_argument("--seed", type=int, default=1337)
    h.add_argument("--threads", type=int, default=0)
    h.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    loss = heldout_loss(args.model, args.data, args.block_size, args.batch, args.eval_batches, args.seed,
                        args.threads)
    text = json.dumps({"heldout_loss": loss, "model": args.model})
    if args.out:
        from lm.checkpoint import atomic_write_text

        atomic_write_text(args.out, text)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
