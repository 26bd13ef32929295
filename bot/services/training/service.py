"""Retraining the chat model on what the bot has seen, from a plan to a promoted model version: the one
object the Telegram admin handlers and the bot's start-up call.

    plan = await service.plan()                 # data from SQL, sized to it, timed (plan.py); nothing written
    run = await service.start(plan, origin)     # a training_runs row + data.jsonl in data_dir/runs/<id>/
    outcome = await service.run(run.id, progress=print)   # child processes; metrics -> progress(job)

/retrain is one call, `retrain(origin, view)`: a plan (or the run it resumes, in the background: `watch`).

Data (dataset.py): the conversations and documents of the chats that opted in, 👎 replies left out, 👍 first,
and a held-out set that is mostly the same from run to run. The plan (plan.py) sizes the run to the data and
estimates its time.

Run (runner.py). A child process (`python -m lm.heldout`) measures the active model's held-out loss on exactly
the batches `lm.train` evaluates on ("before"); then `python -m lm.train --mode lora` trains on top of the
configured base model, writing metrics.jsonl, which is read as it grows for the status line. A finished run
becomes a model version (versions.py), and it becomes the active model only when its held-out loss beats the
active model's on the same examples (or the admin forced it); the swap happens without a restart.

Replicas (bot.services.work_leases). A run's row names the replica that runs it and a lease its heartbeat renews,
as an upload's does; one run at a time across the replicas. When a replica dies mid-run, another takes the
row once the lease has expired (`settle_abandoned`, from bot.app's sweep) and marks it resumable when the
run's checkpoint is on its own disk (a shared data directory), else failed, and the admin who started it is
told. A resumable run stays with the replica whose disk holds its checkpoint. With one process (SQLite), a
start settles every unfinished run (`recover`), as before leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.config import Settings
from bot.db import training as training_db
from bot.db.lease_queries import take_abandoned
from bot.db.session import now_utc
from bot.db.tables import ModelVersion, TrainingRun
from bot.services.chat_settings import Chats, Origin
from bot.services.training import runner
from bot.services.training.dataset import Example, base_info, build_examples, read_sources, write_jsonl
from bot.services.training.plan import (
    Plan,
    PlanProgress,
    StepTime,
    TrainingOptions,
    fit_to_data,
    measured_by_a_run,
    not_enough_data,
)
from bot.services.training.report import RunOutcome, plot_loss_curve, read_metrics, should_promote
from bot.services.training.runner import Job, RunPaths, StepTimer
from bot.services.training.versions import ModelVersions
from bot.services.work_leases import Leases
from bot.telegram import training_texts

log = logging.getLogger(__name__)

PLAN_TTL_S = 15 * 60


class TrainingBusy(RuntimeError):
    pass


class RunView(Protocol):
    """How a run in the background shows itself (the admin's status line)."""

    def progress(self, job: Job) -> None: ...  # after each change of the job's phase or metrics
    def stop(self) -> None: ...  # the run has ended, whichever way
    async def finish(self, outcome: RunOutcome) -> None: ...


class RetrainView(Protocol):
    """How /retrain shows what it does (TrainingService.retrain)."""

    async def planning(self) -> None: ...  # a plan is being prepared
    def plan_progress(self, progress: PlanProgress) -> None: ...
    async def resuming(self, run_id: int) -> RunView: ...  # a stopped run continues: where it shows its progress


@dataclass
class Retrain:
    """What /retrain did: nothing while a run is in flight (`busy`: its job); with resume, the run it resumed
    (None: there was none to resume); else the plan it made (offered to the admin only when ready)."""

    busy: Job | None = None
    resumed: TrainingRun | None = None
    plan: Plan | None = None


class TrainingService:
    """Plans, runs, watches and cancels training runs, and switches model versions."""

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession], models, chats: Chats,
                 options: TrainingOptions | None = None, timer: StepTimer | None = None,
                 leases: Leases | None = None):
        self.settings = settings
        self.sessions = sessions
        self.leases = leases or Leases(sessions, settings.database.lease_s, shared=False)
        self.models = models
        self.chats = chats  # records the admin who starts a run (the run row names them)
        self.options = options or TrainingOptions.from_settings(settings.training)
        self.model_versions = ModelVersions(settings, sessions, models)
        self.job: Job | None = None
        self.task: asyncio.Task | None = None
        self._plans: dict[str, Plan] = {}
        self._tokenizers: dict[str, tuple[Any, int | None]] = {}
        self.timer = timer or StepTimer()  # plans time training steps; a timing is reused for a while

    # ---------------------------------------------------------------- paths and names

    @property
    def runs_dir(self) -> Path:
        return self.settings.data_dir / "runs"

    @property
    def versions_dir(self) -> Path:
        return self.model_versions.root

    def paths(self, run_id: int) -> RunPaths:
        return RunPaths(self.runs_dir / str(run_id))

    @property
    def busy(self) -> bool:
        return self.job is not None

    # ---------------------------------------------------------------- plan

    def _base_info(self, name: str) -> tuple[Any, int | None]:
        """The base model's tokenizer and context length, read once per name."""
        if name not in self._tokenizers:
            self._tokenizers[name] = base_info(name, self.settings.cache_dir)
        return self._tokenizers[name]

    def block_size(self, context: int | None) -> int:
        return min(self.options.block_size, context) if context else self.options.block_size

    async def step_time(self, base: str, o: TrainingOptions, examples: list[Example],
                        progress: Callable[[PlanProgress], None] | None = None) -> StepTime:
        """Seconds per step of `o`: measured by an earlier run with the same shape, else timed on `examples`
        (with the replies the bot was writing meanwhile)."""
        async with self.sessions() as s:
            known = await measured_by_a_run(s, base, o)
        return known or await self.timer.measure(self.settings, base, o, lambda path: write_jsonl(path, examples),
                                                 progress, self.models.replies_in_flight)

    async def plan(self, force: bool = False, progress: Callable[[PlanProgress], None] | None = None) -> Plan:
        """Everything an admin needs to decide: the data, a run sized to it and its measured duration, or why
        there is too little to train on. Nothing is stored. `progress` hears how far it has got. Raises
        ValueError when the base model's tokenizer cannot be read."""
        self._expire_plans()
        if progress is not None:
            progress(PlanProgress("reading"))
        o = self.options
        base = self.settings.model.name
        active, active_id = await self.model_versions.active()
        async with self.sessions() as s:
            sources = await read_sources(s, o.use_chats_by_default)
        tokenizer, ctx = await asyncio.to_thread(self._base_info, base)
        block = self.block_size(ctx)
        train, heldout, stats = await asyncio.to_thread(build_examples, sources, self.settings.model.system_prompt,
                                                        tokenizer, block, o.max_examples)
        fitted = replace(fit_to_data(o, len(train), len(heldout)), block_size=block)
        refusal = not_enough_data(stats, len(train), len(heldout), o.min_examples)
        step = None if refusal else await self.step_time(base, fitted, train + heldout, progress)
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

    async def start(self, plan: Plan, requested_by: Origin) -> TrainingRun:
        """Create the run row and its data file; the run is reserved (busy) until `run` ends it."""
        if self.busy:
            raise TrainingBusy(training_texts.run_in_progress(self.job.run_id))
        if not plan.ready:
            raise ValueError(f"Not enough data to train on: {plan.refusal}")
        await self._refuse_if_another_replica_trains()
        await self.chats.record(requested_by)  # the run row names the admin
        self.job = Job(run_id=0, steps=plan.options.steps)
        try:
            async with self.sessions() as s:
                run = await training_db.create_run(s, mode="lora", requested_by=requested_by.user_id,
                                                   base_version_id=plan.active_version_id,
                                                   lease=self.leases.lease(), config={
                                                       "base": plan.base, "active": plan.active, "force": plan.force,
                                                       "options": asdict(plan.options), "examples": plan.examples,
                                                       "heldout": len(plan.heldout), "tokens": plan.tokens,
                                                       "train_tokens": plan.train_tokens,
                                                       "stats": asdict(plan.stats)})
            self.job.run_id = run.id
            paths = self.paths(run.id)
            try:
                paths.root.mkdir(parents=True, exist_ok=True)
                await asyncio.to_thread(write_jsonl, paths.data, plan.train + plan.heldout)
            except OSError as e:
                async with self.sessions() as s:
                    await training_db.update_run(s, run.id, status="failed", finished_at=now_utc(),
                                                 error=training_texts.data_export_failed(e))
                raise
            return run
        except BaseException:
            self.job = None
            raise

    async def _refuse_if_another_replica_trains(self) -> None:
        """One run at a time across replicas: raise TrainingBusy while another live replica holds one."""
        if not self.leases.shared:
            return
        async with self.sessions() as s:
            other = await training_db.live_run(s, self.leases.clock(), self.leases.owner)
        if other is not None:
            raise TrainingBusy(training_texts.run_in_progress(other.id, elsewhere=True))

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
            raise TrainingBusy(training_texts.run_in_progress(self.job.run_id))
        await self._refuse_if_another_replica_trains()
        self.job = Job(run_id=run.id, steps=int(run.config.get("options", {}).get("steps", self.options.steps)))
        await self._update_run(run.id, **self.leases.lease().values())  # this replica's from now on

    async def retrain(self, requested_by: Origin, view: RetrainView, *, force: bool = False,
                      resume: bool = False) -> Retrain:
        """/retrain, in one call: nothing while a run is in flight; with `resume`, the latest stopped run reserved
        and run in the background (`view.resuming` shows it), if there is one; else a plan (`view.planning` is
        awaited first: timing a step takes minutes on a busy machine), kept for the admin's Start button only when
        it is ready. Raises what `plan` raises."""
        if self.busy:
            return Retrain(busy=self.job)
        if resume:
            run = await self.resumable()
            if run is not None:
                await self.chats.record(requested_by)  # as for a new run
                await self.reserve(run)
                self.watch(run.id, await view.resuming(run.id), resume=True)
            return Retrain(resumed=run)
        await view.planning()
        plan = await self.plan(force=force, progress=view.plan_progress)
        if not plan.ready:  # nothing to start: no button may take it
            self.drop_plan(plan.token)
        return Retrain(plan=plan)

    def watch(self, run_id: int, view: RunView, resume: bool = False) -> asyncio.Task:
        """`run` a started or reserved run in the background (`launch`), `view` told its progress and outcome."""

        async def work() -> RunOutcome:
            try:
                outcome = await self.run(run_id, progress=view.progress, resume=resume)
            finally:
                view.stop()
            await view.finish(outcome)
            return outcome

        return self.launch(work())

    def launch(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """Run `work` (which awaits `run`) as a task of the event loop, not of the Application: a run can last
        hours and must not hold up the Application's shutdown."""
        self.task = asyncio.get_running_loop().create_task(work)
        self.task.add_done_callback(_log_failure)
        return self.task

    async def run(self, run_id: int, progress: Callable[[Job], None] = lambda job: None,
                  resume: bool = False) -> RunOutcome:
        """Measure "before", train in a child process, then register (and maybe promote) the version;
        `progress(job)` after each change of the job's phase or metrics."""
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
            await self._update_run(run_id, status="running", started_at=run.started_at or now_utc(),
                                   log_path=str(paths.log), checkpoint_path=str(paths.checkpoint), error=None)
            before = run.heldout_loss_before
            if before is None and not job.cancel_requested:
                job.phase = "before"
                progress(job)
                before, err = await runner.measure_before(self.settings, job, paths, cfg["active"], options)
                if before is not None:
                    await self._update_run(run_id, heldout_loss_before=before)
                elif err and not job.cancel_requested:
                    outcome.before_error = err
            outcome.before = before
            summary = None
            if not job.cancel_requested:
                job.phase = "training"
                progress(job)
                summary = await runner.train(self.settings, job, paths, cfg["base"], options, resume,
                                             lambda pid: self._update_run(run_id, pid=pid), progress)
            job.phase = "finishing"
            await self._finish(run_id, cfg, options, paths, summary, outcome)
        except asyncio.CancelledError:
            await runner.stop_child(job, paths)
            await self._settle(run_id, paths, outcome, training_texts.RUN_CUT_BY_STOP)
            raise
        except Exception:
            log.exception("training run %s failed", run_id)
            await runner.stop_child(job, paths)
            await self._settle(run_id, paths, outcome, training_texts.RUN_FAILED_ON_BOT)
        finally:
            self.job = None
        return outcome

    async def _update_run(self, run_id: int, **fields: Any) -> TrainingRun:
        async with self.sessions() as s:
            return await training_db.update_run(s, run_id, **fields)

    async def cancel(self) -> int | None:
        """Ask the run in flight to stop: lm.train sees the cancel file at its next step and saves a
        resumable checkpoint; the "before" measurement is simply terminated. Returns the run id."""
        if self.job is None:
            return None
        runner.ask_to_stop(self.job, self.paths(self.job.run_id))
        return self.job.run_id

    async def cancel_all(self) -> tuple[int | None, list[Plan]]:
        """/train_cancel: (the run asked to stop, or None; the open plans, dropped)."""
        return await self.cancel(), self.drop_plans()

    async def shutdown(self, timeout: float = 120.0) -> None:
        """Stop a run in flight cleanly (checkpoint, row "resumable") before the bot exits."""
        if self.task is None or self.task.done():
            return
        await self.cancel()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self.task), timeout)

    async def _settle(self, run_id: int, paths: RunPaths, outcome: RunOutcome, error: str) -> None:
        """A run that ended without a model: resumable when a checkpoint exists, else failed."""
        outcome.status = "resumable" if paths.checkpoint.is_file() else "failed"
        outcome.error = error
        with contextlib.suppress(Exception):
            await self._update_run(run_id, status=outcome.status, error=error,
                                   finished_at=now_utc() if outcome.status == "failed" else None)

    async def _finish(self, run_id: int, cfg: dict, o: TrainingOptions, paths: RunPaths, summary: dict | None,
                      outcome: RunOutcome) -> None:
        job = self.job
        records = read_metrics(paths.metrics)
        done = [r for r in records if not r.get("summary") and "loss" in r]
        outcome.step = summary["step"] if summary else (done[-1]["step"] if done else 0)
        if done:
            outcome.plot = await asyncio.to_thread(plot_loss_curve, records, paths.plot, outcome.before,
                                                   training_texts.loss_curve_title(run_id))
        if summary is None or summary.get("status") != "done":
            if job is not None and job.cancel_requested:
                outcome.status = "resumable" if paths.checkpoint.is_file() else "cancelled"
                await self._update_run(run_id, status=outcome.status, finished_at=now_utc(),
                                       error=training_texts.RUN_CANCELLED)
                return
            tail = paths.log.read_text(errors="replace").strip().splitlines()[-3:] if paths.log.is_file() else []
            await self._settle(run_id, paths, outcome, training_texts.run_unfinished(" | ".join(tail)[-500:]))
            return
        outcome.after = summary.get("val_loss")
        notes = {"run_id": run_id, "steps": summary.get("step"), "ms_per_step": summary.get("ms_per_step"),
                 "batch_size": o.batch_size, "block_size": o.block_size, "examples": cfg.get("examples"),
                 "heldout_loss_before": outcome.before, "train_loss": summary.get("train_loss")}
        version = await self.model_versions.register(run_id, paths.out, cfg["base"], cfg.get("train_tokens"),
                                                     outcome.after, notes)
        outcome.version = version
        if should_promote(outcome.after, outcome.before, bool(cfg.get("force"))):
            try:
                await self.activate(version.id)
                outcome.promoted = True
            except Exception:
                log.exception("could not activate version %s", version.id)
                outcome.load_failed = True
        outcome.status = "succeeded"
        await self._update_run(run_id, status="succeeded", finished_at=now_utc(), result_version_id=version.id,
                               heldout_loss_after=outcome.after, checkpoint_path=None)
        outcome.version = await self.model_versions.get(version.id)

    # ---------------------------------------------------------------- versions

    async def versions(self) -> list[ModelVersion]:
        return await self.model_versions.all()

    async def runs(self, limit: int = 5) -> list[TrainingRun]:
        async with self.sessions() as s:
            return await training_db.list_runs(s, limit)

    async def activate(self, version_id: int | None) -> ModelVersion | None:
        """Serve a version (None: the configured model); see ModelVersions.activate."""
        return await self.model_versions.activate(version_id)

    # ---------------------------------------------------------------- start-up

    async def recover(self) -> list[tuple[int, str]]:
        """Runs a previous bot process left unfinished: a live trainer is stopped (it checkpoints), then each
        becomes "resumable" when its checkpoint exists and "failed" otherwise. Returns (run id, status).
        With replicas, only the runs whose replica died (`settle_abandoned`)."""
        if self.leases.shared:
            return [(run.id, run.status) for run in await self.settle_abandoned()]
        async with self.sessions() as s:
            runs = await training_db.unfinished_runs(s)
        changed = []
        for run in runs:
            if self.job is not None and self.job.run_id == run.id:
                continue  # ours, in flight
            paths = self.paths(run.id)
            if run.status == "resumable" and paths.checkpoint.is_file():
                continue
            await runner.stop_stale(run.pid, paths)
            status = "resumable" if paths.checkpoint.is_file() else "failed"
            error = training_texts.RESTART_RESUMABLE if status == "resumable" else training_texts.RESTART_FAILED
            if run.status == "resumable":
                error = training_texts.CHECKPOINT_GONE
            await self._update_run(run.id, status=status, error=error,
                                   finished_at=now_utc() if status == "failed" else None)
            changed.append((run.id, status))
        return changed

    async def settle_abandoned(self) -> list[TrainingRun]:
        """Runs pending or running whose replica died (their lease expired), each taken by one replica: resumable
        when the run's checkpoint is on this machine's disk, else failed. The runs as now stored, for their
        admins to be told."""
        async with self.sessions() as s:
            taken = await take_abandoned(s, TrainingRun, self.leases.lease(), self.leases.expired_before())
        settled = []
        for run in taken:
            if self.job is not None and self.job.run_id == run.id:
                continue  # ours, in flight (a heartbeat came late): it goes on
            paths = self.paths(run.id)
            await runner.stop_stale(run.pid, paths)  # a trainer here, left by a process of this machine
            status = "resumable" if paths.checkpoint.is_file() else "failed"
            error = training_texts.REPLICA_RESUMABLE if status == "resumable" else training_texts.REPLICA_FAILED
            settled.append(await self._update_run(run.id, status=status, error=error,
                                                  finished_at=now_utc() if status == "failed" else None))
            log.warning("training run %s lost its replica (%s); it is now %s", run.id, run.owner, status)
        return settled

    async def restore_active_model(self) -> ModelVersion | None:
        """Call once at bot start (post_init): settle runs a previous process left unfinished, then load the
        active version from SQL instead of the configured model (ModelVersions.restore). With replicas, runs
        are settled by the sweep instead (bot.app), which tells their admins."""
        if not self.leases.shared:
            for run_id, status in await self.recover():
                log.warning("training run %s was left unfinished; it is now %s", run_id, status)
        return await self.model_versions.restore()


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("training task failed", exc_info=task.exception())
