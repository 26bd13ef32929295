"""What the bot says to its admins about training and model versions: /training, /retrain and its plan,
/train_status, /train_cancel, /models, /rollback. The rest of what the bot says is in bot/telegram/texts.py."""

from __future__ import annotations

from bot.telegram.texts import _n

COMMAND_MENU = {  # Telegram's list of commands (bot.telegram.texts.COMMAND_MENU has the rest)
    "training": "use this chat's conversations for training: /training on|off",
    "retrain": "admins: retrain the model on opted-in chats (force, resume)",
    "train_status": "admins: the current or last training run",
    "train_cancel": "admins: stop the training run (it can be resumed)",
    "models": "admins: list model versions",
    "rollback": "admins: switch model version: /rollback ID or /rollback base",
}
# ---- why a run is refused or ended without a model, as TrainingBusy says it and the run's row stores it (the run's
# report and /train_status show them)
RUN_FAILED_ON_BOT = "The run failed on the bot's side; the bot's log has the details."
RUN_CUT_BY_STOP = "the bot stopped during the run"
RUN_CANCELLED = "cancelled by an admin"
RESTART_RESUMABLE = "the bot stopped during the run; it can continue from its checkpoint"
RESTART_FAILED = "the training process ended without a model or a checkpoint"
CHECKPOINT_GONE = "its checkpoint is gone"
REPLICA_RESUMABLE = "the replica running it stopped; it can continue from its checkpoint"
REPLICA_FAILED = "the replica running it stopped, and no checkpoint of it is left"


def run_in_progress(run_id: int, elsewhere: bool = False) -> str:
    return f"run #{run_id} is in progress on another replica" if elsewhere else f"run #{run_id} is still in progress"


def run_unfinished(log_tail: str) -> str:
    return "training process ended without finishing: " + log_tail


def data_export_failed(error: Exception) -> str:
    return f"data export: {error}"


def loss_curve_title(run_id: int) -> str:
    return f"Training run #{run_id}"


def child_failed(code: int, log_path) -> str:
    """Why the current model's held-out loss was not measured: its child process failed."""
    return f"exit code {code}; see {log_path}"


# ---- where a plan's step time comes from (StepTime.basis), or why it could not be timed


def measured_by_run(run_id) -> str:
    return f"as measured by run #{run_id}"


def timed_now(steps: int) -> str:
    return f"timed on {steps} training steps of this data just now"


def timed_earlier(steps: int, seconds_ago: float) -> str:
    return f"timed on {steps} training steps {format_duration(seconds_ago)} ago"


def not_timed(error: str) -> str:
    return f"a training step could not be timed: {error}"


def timing_too_slow(steps: int, timeout_s: float) -> str:
    return f"{steps} steps took longer than {timeout_s / 60:.0f} minutes"


def trainer_exited(code: int | None, last_line: str) -> str:
    return f"lm.train exited with {code}" + (f" ({last_line})" if last_line else "")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


ADMINS_ONLY = "Only the bot's admins can do that."
TRAINING_USAGE = "Usage: /training on  or  /training off"
TRAINING_GROUP_ADMINS_ONLY = "Only admins can change this for a group."
TRAINING_ON = "This chat's conversations may now be used to train the model."
TRAINING_OFF = "This chat's conversations will not be used for training."
RETRAIN_USAGE = "Usage: /retrain, /retrain force (activate whatever the loss) or /retrain resume"
NOTHING_TO_RESUME = "There is no stopped run to resume. Start a new one with /retrain."
# reading every chat and document and timing training steps takes a while: said at once, then edited
PREPARING_PLAN = ("Preparing a retraining plan: reading the opted-in chats and documents, then timing a few "
                  "training steps…")
PLAN_FAILED = ("I could not prepare a training run: the configured base model or the stored data could not be "
               "read, or its timed trial steps failed. The bot's log has the details.")
START_BUTTON, DROP_BUTTON = "▶️ Start", "✖️ Cancel"
PLAN_DROPPED_ANSWER = "Cancelled"
PLAN_DROPPED = "Retraining cancelled; nothing was trained."
PLAN_EXPIRED_ANSWER = "This plan has expired."
PLAN_EXPIRED = "This plan has expired or was already used. Send /retrain again."
RUN_NOT_STARTED_ANSWER = "Could not start"
RUN_NOT_STARTED = ("The training run could not start: its data could not be written on the server. The bot's "
                   "log has the details.")
PLAN_CANCELLED = "Retraining cancelled with /train_cancel; nothing was trained."
NO_RUNS = "No training runs yet. Start one with /retrain."
ROLLBACK_USAGE = "Usage: /rollback ID (see /models) or /rollback base"


def training_state(on: bool, by_default: bool) -> str:
    """/training without an argument: whether this chat's conversations are trained on."""
    return (f"Training on this chat's conversations is {'on' if on else 'off'}"
            f"{' (the default)' if by_default else ''}. Change it with /training on|off.")


def format_loss(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "?"


def step_time_text(step) -> str:
    """Seconds per training step, where the figure comes from (bot.services.training.plan.StepTime), and what
    else the machine was doing meanwhile: steps timed while replies are written are slower than a quiet run's."""
    if step.ms is None:
        return step.basis
    per_step = f"{step.ms:.0f} ms" if step.ms < 1000 else f"{step.ms / 1000:.1f}s"
    busy = []
    if step.replies:
        busy.append(f"while I was writing {step.replies} repl{'y' if step.replies == 1 else 'ies'}")
    if step.load_per_core is not None and step.load_per_core >= 0.75:
        busy.append(f"with the machine busy (load {step.load_per_core:.1f} per core)")
    caveat = f", {' and '.join(busy)}: the run may be faster when the bot is quiet" if busy else ""
    return f"{per_step} per step, {step.basis}{caveat}"


def plan_progress(progress) -> str:
    """The status line of /retrain while it plans (bot.services.training.plan.PlanProgress)."""
    if progress.stage == "reading":
        return "Preparing a retraining plan: reading the opted-in chats and documents…"
    waited = format_duration(progress.elapsed_s)
    if progress.done == 0:
        return (f"Preparing a retraining plan: timing {progress.of} training steps on this data, to estimate the "
                f"run's length. Loading the base model and running step 1 of {progress.of}… ({waited} so far)")
    if progress.done < progress.of:
        return (f"Preparing a retraining plan: timing {progress.of} training steps on this data. Step "
                f"{progress.done} of {progress.of} done, running step {progress.done + 1}… ({waited} so far)")
    return f"Preparing a retraining plan: {progress.of} of {progress.of} steps timed ({waited}); writing the plan…"


def shortfall_text(shortfall) -> str:
    """Why a run cannot train on the data there is, in an admin's terms (bot.services.training.plan.Shortfall)."""
    if shortfall.reason == "no chats":
        return ("No chat has opted in to training yet, so there is nothing to train on. A chat opts in with "
                "/training on (admins can do it for a group).")
    if shortfall.reason == "no examples":
        return ("The opted-in chats have no finished exchanges or documents yet, so there is nothing to train "
                "on. Chat with the bot there, or upload documents, and try again.")
    n = shortfall.examples
    return (f"Not enough data to train on yet: {n} example{'s' if n != 1 else ''}, and a run needs at least "
            f"{shortfall.needed}. One in ten (at least one) is held out to measure whether the new version is "
            "better, and the rest must be enough to learn from. More exchanges in opted-in chats (/training on) "
            "and their documents add examples.")


def _sizing(plan) -> str:
    o, n = plan.options, len(plan.train)
    epochs = f"{o.epochs_over(n):.1f}".removesuffix(".0")
    text = (f"{o.steps} steps × batch {o.batch_size} ≈ {epochs} epoch{'s' if epochs != '1' else ''} over the "
            f"{n:,} training example{'s' if n != 1 else ''}")
    if o.steps == o.max_steps and o.epochs_over(n) < o.epochs:
        text += f" (capped at max_steps {o.max_steps}; {o.epochs:g} epochs would take more)"
    return text


def plan_text(plan) -> str:
    """What a run would train on, and how long, or why it cannot (bot.services.training.plan.Plan)."""
    s, o = plan.stats, plan.options
    lines = [
        "Retraining plan",
        f"• Conversations: {s.conversations} from {s.chats} opted-in chat(s), {s.exchanges} exchanges "
        f"({s.liked} rated 👍 first; {s.disliked} rated 👎 left out)",
        f"• Documents: {s.documents} ({_n(s.chunks, 'chunk')}, trained as question -> passage examples)",
        f"• Examples: {plan.examples} ({len(plan.heldout)} held out for the before/after loss), "
        f"{plan.tokens:,} tokens" + (f"; {s.dropped} left out (too long or over the cap)" if s.dropped else ""),
    ]
    if plan.refusal is not None:
        return "\n".join(lines) + "\n\n" + shortfall_text(plan.refusal)
    lines += [
        f"• LoRA rank {o.lora_rank} on {plan.base}: {_sizing(plan)}, lr {o.learning_rate:g}, "
        f"block {o.block_size}",
        f"• Estimated time: {format_duration(plan.est_seconds)} ({step_time_text(plan.step)})",
        "• The new version replaces the current model only if its held-out loss is lower."
        if not plan.force else "• force: the new version becomes the active model whatever its loss.",
    ]
    return "\n".join(lines)


def job_text(job) -> str:
    """The status line of the run in flight (bot.services.training.runner.Job)."""
    if job.phase == "before":
        return f"Run #{job.run_id}: measuring the current model's held-out loss…"
    if job.phase != "training" or not job.last:
        return f"Run #{job.run_id}: {'loading the base model' if job.phase == 'training' else job.phase}…"
    r = job.last
    text = f"Run #{job.run_id}: step {r['step']}/{job.steps} · loss {r['loss']:.3f}"
    if "eval_loss" in r:
        text += f" · held-out {r['eval_loss']:.3f}"
    return text + f" · ETA {format_duration(r.get('eta_s'))}"


def training_busy(job) -> str:
    return (f"A training run is already in progress. {job_text(job)}\n"
            "See /train_status, or stop it with /train_cancel.")


def resuming(run_id: int) -> str:
    return f"Resuming training run #{run_id}…"


def run_started_answer(run_id: int) -> str:
    return f"Training run #{run_id} started"


def run_starting(run_id: int) -> str:
    return f"Training run #{run_id}: starting…"


def busy_answer(error: Exception) -> str:
    return f"Busy: {error}"


def outcome_text(outcome) -> str:
    """The final report of a run (bot.services.training.report.RunOutcome)."""
    head = {"succeeded": "finished", "resumable": "stopped; resume it with /retrain resume",
            "cancelled": "cancelled", "failed": "failed"}[outcome.status]
    lines = [f"Training run #{outcome.run_id} {head} (step {outcome.step}/{outcome.steps})."]
    if outcome.before is not None or outcome.after is not None:
        lines.append(f"Held-out loss: before {format_loss(outcome.before)}, after {format_loss(outcome.after)}.")
    version = outcome.version
    if version is not None:
        if outcome.promoted:
            why = " (forced)" if outcome.promoted_by_force else ""
            lines.append(f"Version #{version.id} ({version.name}) is now the active model{why}.")
        else:
            lines.append(f"Version #{version.id} ({version.name}) was saved but not activated: its held-out loss "
                         f"is not lower. Use /rollback {version.id} to use it anyway.")
    if outcome.load_failed:
        lines.append("The new version could not be loaded, so the current model stays (see the bot's log).")
    elif outcome.before_error:
        lines.append(f"The current model's held-out loss could not be measured ({outcome.before_error}).")
    elif outcome.error:
        lines.append(outcome.error)
    return "\n".join(lines)


def run_abandoned_text(run) -> str:
    """A run whose replica died mid-run (bot.db.tables.TrainingRun, as settled by another replica)."""
    then = ("It can continue from its checkpoint: /retrain resume." if run.status == "resumable"
            else "Its progress is lost; start a new one with /retrain.")
    return f"⚠️ Training run #{run.id} was interrupted: the replica running it stopped. {then}"


def loss_curve_caption(run_id: int) -> str:
    return f"Loss curve of training run #{run_id}"


def runs_text(runs) -> str:
    """/train_status with no run in flight: the latest runs (bot.db.tables.TrainingRun), newest first."""
    lines = []
    for r in runs:
        losses = ""
        if r.heldout_loss_before is not None or r.heldout_loss_after is not None:
            losses = f", held-out {format_loss(r.heldout_loss_before)} → {format_loss(r.heldout_loss_after)}"
        took = ""
        if r.started_at and r.finished_at:
            took = f", took {format_duration((r.finished_at - r.started_at).total_seconds())}"
        version = f", version #{r.result_version_id}" if r.result_version_id else ""
        error = f"\n   {r.error}" if r.error and r.status != "succeeded" else ""
        lines.append(f"#{r.id} {r.status}{losses}{took}{version}{error}")
    return "Recent training runs:\n" + "\n".join(lines)


def train_cancel_text(run_id: int | None, plans_dropped: bool) -> str:
    if run_id is not None:
        return (f"Stopping training run #{run_id}; it saves a checkpoint at its next step. "
                "The active model is unchanged.")
    if plans_dropped:
        return "Cancelled the open retraining plan; nothing was trained."
    return "No training run is in progress and no plan is open."


def versions_text(versions, configured: str) -> str:
    """/models: the configured model, then every version (bot.db.tables.ModelVersion), the active one marked."""
    active = next((v for v in versions if v.is_active), None)
    lines = [f"base – {configured} (configured){'  ✅ active' if active is None else ''}"]
    for v in versions:
        size = f"{v.data_size:,} tokens" if v.data_size is not None else "? tokens"
        lines.append(f"#{v.id} {v.name} – base {v.base}, {v.created_at:%Y-%m-%d %H:%M} UTC, {size}, "
                     f"held-out {format_loss(v.heldout_loss)}{'  ✅ active' if v.is_active else ''}")
    return "Model versions:\n" + "\n".join(lines) + "\n\nSwitch with /rollback ID or /rollback base."


def unknown_version(version_id: int) -> str:
    return f"There is no model version {version_id}. See /models."


def version_files_missing(version_id: int) -> str:
    return (f"Version #{version_id}'s files are missing on the server, so it cannot be served; the current model "
            "stays active. The bot's log names the folder.")


def version_not_loaded(version_id: int | None) -> str:
    which = "The configured base model" if version_id is None else f"Version #{version_id}"
    return (f"{which} could not be loaded: its files are damaged or not a model I can read. The current one stays "
            "active; the bot's log has the details.")


def now_serving(version, configured: str) -> str:
    """After /rollback: the version now serving (bot.db.tables.ModelVersion), or None for the configured model."""
    if version is None:
        return f"Now serving {configured} (the configured base model)."
    return f"Now serving version #{version.id} ({version.name})."
