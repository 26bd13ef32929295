"""The training service against a real SQLite database, a tiny random GGUF model and real files: what is
exported (opt-in, 👎 left out, 👍 first, documents), the plan's numbers, the promotion rule through the real
model manager, recovery of runs whose process is gone, and the loss-curve PNG."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import Settings
from bot.db import chat_queries, document_queries, message_queries
from bot.db import training as training_db
from bot.db.session import create_engine, session_factory, upgrade
from bot.services.chat_settings import Chats, Origin
from bot.services.lm_gateway import ModelManager
from bot.services.training.dataset import DataStats, Example, arrange
from bot.services.training.plan import TrainingOptions
from bot.services.training.report import MetricsTail, RunOutcome, plot_loss_curve, should_promote
from bot.services.training.runner import StepTimer, train_args
from bot.services.training.service import TrainingService
from bot.telegram.training_texts import plan_text, step_time_text
from lm.data import chat_examples, read_chat_jsonl, split_examples
from lm.heldout import heldout_loss
from lm.tokenizer import Tokenizer
from tests.support.tiny_gguf import write_tiny_gguf

ON, OFF, UNSET, ADMIN = 101, 102, 103, 900
BY_ADMIN = Origin(chat_id=ADMIN, chat_type="private", user_id=ADMIN)  # who starts the runs
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf", max_seq_len=512).path


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny) -> tuple[Path, dict]:
    """A real finished LoRA run directory (lm.train in-process, 3 steps) and its summary."""
    from lm.train import TrainConfig, train

    root = tmp_path_factory.mktemp("lora")
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "system", "content": "You are a test assistant."},
        {"role": "user", "content": f"question {i}"},
        {"role": "assistant", "content": f"The quick brown fox {i} jumps over the lazy dog."}]}) + "\n"
        for i in range(6)))
    cfg = TrainConfig(mode="lora", base=str(tiny), data=str(data), out_dir=str(root / "out"), steps=3,
                      batch_size=2, block_size=128, eval_batches=2, eval_interval=0, warmup=0, lr=1e-2,
                      progress=False, seed=7)
    return root, train(cfg)


def settings_for(tmp_path: Path, tiny: Path, **training) -> Settings:
    s = Settings(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    s.model.name = str(tiny)
    s.model.weights = "fp32"
    s.model.context_tokens = 256
    s.model.system_prompt = "You are a test assistant."
    s.telegram.admins = [ADMIN]
    for key, value in training.items():
        setattr(s.training, key, value)
    return s


@pytest.fixture(scope="module")
def timer() -> StepTimer:
    """One step timer for the module: the tiny model's steps are timed once, not once per test."""
    return StepTimer()


@pytest.fixture
async def service(tmp_path, tiny, timer):
    settings = settings_for(tmp_path, tiny)
    url = settings.database_url
    settings.data_dir.mkdir(parents=True)
    await upgrade(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    svc = TrainingService(settings, sessions, ModelManager(settings), Chats(settings, sessions),
                          TrainingOptions(max_steps=4, batch_size=2, block_size=128, eval_batches=2, min_examples=2),
                          timer=timer)
    yield svc
    await engine.dispose()


async def exchange(s, chat: int, update_id: int, question: str, answer: str, vote: int | None = None) -> int:
    user = await message_queries.record_update_and_user_message(s, update_id, chat, chat, question, update_id)
    reply = await message_queries.add_assistant_message(s, user.conversation_id, chat, answer, status="complete",
                                                        telegram_message_id=update_id + 10_000)
    if vote is not None:
        await message_queries.set_feedback(s, reply.id, chat, vote)
    return reply.id


async def fill(svc: TrainingService) -> None:
    """Chat ON opted in (two conversations, a 👍, a 👎, a failed reply, a document); OFF opted out; UNSET
    never chose (the default decides)."""
    async with svc.sessions() as s:
        for chat in (ON, OFF, UNSET, ADMIN):
            await chat_queries.ensure_user_and_chat(s, chat, "private", chat, f"u{chat}", "U")
        await chat_queries.set_chat_settings(s, ON, allow_training=True)
        await chat_queries.set_chat_settings(s, OFF, allow_training=False)
        await exchange(s, ON, 1, "What is the capital of France?", "Paris is the capital of France.", +1)
        await exchange(s, ON, 2, "And of Spain?", "Spain's capital is Lisbon, I think.", -1)
        await exchange(s, ON, 3, "How tall is the Eiffel tower?", "About 330 metres.")
        user = await message_queries.record_update_and_user_message(s, 4, ON, ON, "Are you there?", 4)
        await message_queries.add_assistant_message(s, user.conversation_id, ON, "half a rep", status="failed")
        await chat_queries.start_new_conversation(s, ON)
        await exchange(s, ON, 5, "Tell me a joke.", "Why did the fox jump? To get over the lazy dog.")
        await exchange(s, OFF, 6, "private matter", "secret answer from the opted-out chat")
        await exchange(s, UNSET, 7, "undecided question", "answer from the chat that never chose")
        await document_queries.add_document_with_chunks(
            s, scope=f"chat:{ON}", chat_id=ON, name="guide.md", mime="text/markdown", sha256="a" * 64, size_bytes=10,
            pages=None, status="ready", chunks=[
                document_queries.NewChunk("The guide says foxes are quick.", 8, heading="Foxes"),
                document_queries.NewChunk("Dogs are lazy, the guide adds.", 8, page=2)])
        await document_queries.add_document_with_chunks(
            s, scope=f"chat:{OFF}", chat_id=OFF, name="diary.md", mime="text/markdown", sha256="b" * 64,
            size_bytes=10, pages=None, status="ready",
            chunks=[document_queries.NewChunk("Dear diary, nobody may train on this.", 9)])


def texts(conversations: list[list[dict]], role: str) -> list[str]:
    return [m["content"] for c in conversations for m in c if m["role"] == role]


async def test_export_respects_opt_in_drops_disliked_replies_and_includes_documents(service):
    await fill(service)
    plan = await service.plan()
    run = await service.start(plan, requested_by=BY_ADMIN)
    service.job = None  # only the export is under test; nothing will run
    written = read_chat_jsonl(service.paths(run.id).data)  # the file lm.train reads, parsed by lm itself
    answers, questions = texts(written, "assistant"), texts(written, "user")
    assert "Paris is the capital of France." in answers and "About 330 metres." in answers
    assert "Why did the fox jump? To get over the lazy dog." in answers
    assert not any("Lisbon" in a for a in answers) and "And of Spain?" not in questions  # 👎 and its question
    assert "half a rep" not in answers  # a failed reply is never a target
    assert not any("secret" in a or "never chose" in a for a in answers)  # OFF, and UNSET under default off
    assert "The guide says foxes are quick." in answers and "Dogs are lazy, the guide adds." in answers
    assert "What does guide.md say about Foxes?" in questions and "What does guide.md (page 2) say?" in questions
    assert not any("diary" in a for a in answers)
    # the 👍 exchange and the one after the 👎 are separate examples: no example carries the bad reply in context
    assert all(m["role"] != "assistant" or "Lisbon" not in m["content"] for c in written for m in c)
    assert all(c[0] == {"role": "system", "content": "You are a test assistant."} for c in written)

    service.options.use_chats_by_default = True
    answers = texts([e.messages for e in (await service.plan()).train + (await service.plan()).heldout],
                    "assistant")
    assert "answer from the chat that never chose" in answers
    assert "secret answer from the opted-out chat" not in answers  # an explicit "off" beats the default


async def test_plan_numbers_match_what_lm_train_will_see(service, tiny):
    await fill(service)
    plan = await service.plan()
    s = plan.stats
    assert (s.chats, s.conversations, s.exchanges, s.liked, s.disliked, s.documents, s.chunks) == \
        (1, 2, 3, 1, 1, 1, 2)
    run = await service.start(plan, requested_by=BY_ADMIN)
    service.job = None
    conversations = read_chat_jsonl(service.paths(run.id).data)
    tokenizer = Tokenizer.from_gguf(str(tiny))
    examples = chat_examples(conversations, tokenizer, 128)
    assert len(examples) == plan.examples == len(conversations)  # lm.train drops none of them
    assert sum(len(ids) for ids, _ in examples) == plan.tokens
    _, held = split_examples(examples)
    assert len(held) == len(plan.heldout) >= 1
    # lm.train holds out the file's last examples: exactly the ones the plan chose
    assert [ids for ids, _ in held] == [ids for ids, _ in chat_examples([e.messages for e in plan.heldout],
                                                                        tokenizer, 128)]
    assert "tokens" in plan_text(plan) and str(plan.examples) in plan_text(plan)

    # the estimate: real training steps timed on this data, then what a finished run measured with the same
    # base model, batch and block size (a run on another base is no guide)
    o = plan.options
    assert plan.step.ms > 0 and " per step, timed on 3 training steps" in step_time_text(plan.step)
    assert f"({step_time_text(plan.step)})" in plan_text(plan)
    assert plan.est_seconds == pytest.approx(plan.step.ms / 1000 * (o.steps + o.evals * o.eval_batches / 3))
    async with service.sessions() as ses:
        await training_db.add_version(ses, name="run-x", base=str(tiny), path="/nowhere", notes=json.dumps(
            {"run_id": 42, "ms_per_step": 3000.0, "batch_size": o.batch_size, "block_size": o.block_size}))
        await training_db.add_version(ses, name="run-y", base="another-model", path="/nowhere", notes=json.dumps(
            {"run_id": 43, "ms_per_step": 9000.0, "batch_size": o.batch_size, "block_size": o.block_size}))
    again = await service.plan()
    assert "3.0s per step, as measured by run #42" in plan_text(again)
    assert again.est_seconds == pytest.approx(3.0 * (o.steps + o.evals * o.eval_batches / 3))


async def test_the_plan_and_the_run_it_starts_fit_the_small_data_set(service):
    await fill(service)  # 5 examples: 4 to train on, 1 held out
    service.options = TrainingOptions(epochs=1.5, max_steps=200, batch_size=2, block_size=128, eval_batches=8,
                                      min_examples=2)
    plan = await service.plan()
    assert (len(plan.train), len(plan.heldout)) == (4, 1)
    assert (plan.options.steps, plan.options.batch_size, plan.options.eval_batches) == (3, 2, 1)
    assert "3 steps × batch 2 ≈ 1.5 epochs over the 4 training examples" in plan_text(plan)
    run = await service.start(plan, requested_by=BY_ADMIN)
    service.job = None
    async with service.sessions() as s:
        stored = TrainingOptions.from_stored((await training_db.get_run(s, run.id)).config["options"])
    args = train_args(service.paths(run.id), plan.base, stored, resume=False)
    assert args[args.index("--steps") + 1] == "3" and args[args.index("--batch") + 1] == "2"
    assert args[args.index("--eval-batches") + 1] == "1"


async def test_too_little_data_gets_a_plan_that_says_so_and_cannot_start(service):
    await fill(service)
    service.options.min_examples = 6
    plan = await service.plan()
    assert not plan.ready and plan.step is None  # nothing was timed for it
    assert "Not enough data to train on yet: 5 examples, and a run needs at least 6" in plan_text(plan)
    assert "Estimated time" not in plan_text(plan)
    with pytest.raises(ValueError, match="Not enough data"):
        await service.start(plan, requested_by=BY_ADMIN)
    async with service.sessions() as s:
        assert await training_db.list_runs(s) == []
    assert not service.busy and not service.runs_dir.exists()


async def test_a_step_timing_is_reused_for_the_same_model_and_batch_shape(service, timer):
    await fill(service)
    plan = await service.plan()

    def must_not_time_again(path):
        raise AssertionError("the steps were timed again")

    again = await timer.measure(service.settings, plan.base, plan.options, must_not_time_again)
    assert again.ms == plan.step.ms and again.basis.endswith(" ago")


def test_liked_examples_come_first_and_survive_the_cap_and_the_held_out_choice_is_stable():
    def ex(key: str, liked: bool = False) -> Example:
        return Example([], "document" if key[0] == "d" else "conversation", key, liked, 10)

    newer, liked, doc = ex("c9"), ex("c1", liked=True), ex("d5")
    stats = DataStats()
    train, held = arrange([newer, liked], [doc], max_examples=2, stats=stats)
    assert {id(e) for e in train + held} == {id(liked), id(newer)} and stats.dropped == 1  # the cap cut the doc
    ranked = [liked, newer]
    assert [e for e in ranked if e in train] == train  # the file keeps the priority order
    convs = [ex(f"c{i}", liked=i % 3 == 0) for i in range(40)]
    train3, held1 = arrange(convs, [], 100, DataStats())
    # which examples are held out depends on their ids only: not on votes, not on recency
    revoted = [ex(f"c{i}", liked=i % 2 == 0) for i in range(40)]
    _, held2 = arrange(revoted, [], 100, DataStats())
    assert len(held1) == 4 and {e.key for e in held1} == {e.key for e in held2}
    _, grown_held = arrange(convs + [ex(f"c{i}") for i in range(40, 50)], [], 100, DataStats())
    assert len(grown_held) == 5 and len({e.key for e in held1} & {e.key for e in grown_held}) >= 3
    first_unliked = next(i for i, e in enumerate(train3) if not e.liked)
    assert all(e.liked for e in train3[:first_unliked]) and not any(e.liked for e in train3[first_unliked:])


def test_promotion_rule():
    assert should_promote(1.9, 2.0)
    assert not should_promote(2.1, 2.0) and not should_promote(2.0, 2.0)
    assert should_promote(2.5, 2.0, force=True)
    assert not should_promote(1.0, None)  # nothing to compare with: only force promotes
    assert should_promote(1.0, None, force=True) and not should_promote(None, 1.0, force=True)


@pytest.mark.parametrize("before_delta, force, promoted", [(+0.5, False, True), (-0.5, False, False),
                                                           (-0.5, True, True)])
async def test_finished_run_becomes_a_version_and_is_promoted_only_when_better(service, lora_run, before_delta,
                                                                               force, promoted):
    root, summary = lora_run
    await fill(service)
    plan = await service.plan(force=force)
    run = await service.start(plan, requested_by=BY_ADMIN)
    paths = service.paths(run.id)
    shutil.copytree(root / "out", paths.out)
    before = summary["val_loss"] + before_delta
    outcome = RunOutcome(run.id, "failed", before=before, steps=3, forced=force)
    async with service.sessions() as s:
        run = await training_db.get_run(s, run.id)
    await service._finish(run.id, run.config, service.options, paths, summary, outcome)
    service.job = None

    assert outcome.status == "succeeded" and outcome.promoted is promoted
    version_dir = service.versions_dir / f"run-{run.id}"
    assert Path(outcome.version.path) == version_dir and (version_dir / "lora.safetensors").is_file()
    assert not paths.out.exists()  # moved whole, never half-copied
    assert outcome.plot is not None and outcome.plot.read_bytes()[:8] == PNG_MAGIC
    async with service.sessions() as s:
        active = await training_db.active_version(s)
        stored = await training_db.get_run(s, run.id)
    assert stored.status == "succeeded" and stored.result_version_id == outcome.version.id
    assert stored.heldout_loss_after == pytest.approx(summary["val_loss"])
    assert outcome.version.heldout_loss == pytest.approx(summary["val_loss"])
    current = service.models._current
    if promoted:
        assert active is not None and active.id == outcome.version.id
        assert current is not None and current.version_id == outcome.version.id
    else:
        assert active is None and current is None  # the configured model stays; nothing was loaded
    # rollback to the configured model and back to the version, through the real model manager
    await service.activate(None)
    assert (await service.models.current()).version_id is None
    async with service.sessions() as s:
        assert await training_db.active_version(s) is None
    with pytest.raises(ValueError, match="no model version 999"):
        await service.activate(999)


def test_heldout_loss_measures_what_lm_train_reports(lora_run):
    """"before" and "after" are comparable: measured the child's way, the trained version's held-out loss is
    lm.train's own final val_loss on the same data."""
    root, summary = lora_run
    loss = heldout_loss(str(root / "out"), root / "data.jsonl", block_size=128, batch_size=2, eval_batches=2, seed=7)
    assert loss == pytest.approx(summary["val_loss"], abs=1e-4)


async def test_runs_whose_process_is_gone_become_resumable_or_failed(service):
    await fill(service)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ids = {}
    async with service.sessions() as s:
        for name, status in (("ckpt", "running"), ("nockpt", "running"), ("pending", "pending"),
                             ("live", "running"), ("gone", "resumable")):
            run = await training_db.create_run(s, mode="lora", config={})
            ids[name] = run.id
            await training_db.update_run(s, run.id, status=status, pid=dead.pid)
    for name in ("ckpt", "gone", "live"):
        service.paths(ids[name]).out.mkdir(parents=True)
    service.paths(ids["ckpt"]).checkpoint.write_bytes(b"state")
    # a trainer still running from the previous bot process: it must be stopped, and it checkpoints on SIGTERM
    live_paths = service.paths(ids["live"])
    script = ("import pathlib,signal,sys,time\n"
              "def stop(*a):\n    pathlib.Path(sys.argv[1], 'checkpoint.pt').write_bytes(b'x'); sys.exit(3)\n"
              "signal.signal(signal.SIGTERM, stop)\nprint('ready', flush=True)\ntime.sleep(60)\n")
    live = subprocess.Popen([sys.executable, "-c", script, str(live_paths.out)], stdout=subprocess.PIPE)
    assert live.stdout.readline() == b"ready\n"
    async with service.sessions() as s:
        await training_db.update_run(s, ids["live"], pid=live.pid)

    changed = dict(await service.recover())
    assert live.wait(5) == 3
    assert changed == {ids["ckpt"]: "resumable", ids["nockpt"]: "failed", ids["pending"]: "failed",
                       ids["live"]: "resumable", ids["gone"]: "failed"}
    async with service.sessions() as s:
        for run_id, status in changed.items():
            assert (await training_db.get_run(s, run_id)).status == status
        assert await training_db.active_version(s) is None
        assert [r.id for r in await training_db.unfinished_runs(s)] == [ids["ckpt"], ids["live"]]
    assert (await service.resumable()).id == ids["live"]
    assert await service.recover() == []  # settled runs stay settled


def test_loss_curve_png_and_metrics_tail(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    tail = MetricsTail(metrics)
    assert tail.read() == []
    with open(metrics, "w") as f:
        f.write(json.dumps({"step": 1, "loss": 3.0, "eta_s": 9}) + "\n" + '{"step": 2, "lo')
    assert [r["step"] for r in tail.read()] == [1]  # the half-written line waits
    with open(metrics, "a") as f:
        f.write('ss": 2.5, "eval_loss": 2.7, "eta_s": 4}\n' + json.dumps({"summary": True, "status": "done"}) + "\n")
    records = tail.read()
    assert [r.get("step") for r in records] == [2, None] and records[1]["summary"]
    png = plot_loss_curve([{"step": 1, "loss": 3.0}, *records], tmp_path / "loss.png", before=2.9, title="t")
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000
    assert not list(tmp_path.glob(".*.tmp"))


async def test_a_plan_reports_its_progress_while_it_times_steps(service):
    from bot.services.training.plan import PlanProgress

    await fill(service)
    heard: list[PlanProgress] = []
    service.timer = StepTimer()  # not the module's, which may have timed this shape already: this one must time
    plan = await service.plan(progress=heard.append)
    assert plan.step.ms > 0 and heard[0] == PlanProgress("reading")
    timing = [p for p in heard if p.stage == "timing"]
    assert timing and [p.done for p in timing] == sorted(p.done for p in timing)  # steps only go forward
    assert timing[-1].done == timing[-1].of == 3 and timing[-1].elapsed_s > 0


def test_the_step_time_says_when_replies_competed_with_the_timing():
    from bot.services.training.plan import StepTime

    quiet = StepTime(34_000, "timed on 3 training steps of this data just now", replies=0, load_per_core=0.2)
    busy = StepTime(34_000, "timed on 3 training steps of this data just now", replies=2, load_per_core=1.6)
    assert step_time_text(quiet) == "34.0s per step, timed on 3 training steps of this data just now"
    assert step_time_text(busy) == ("34.0s per step, timed on 3 training steps of this data just now, while I was "
                                    "writing 2 replies and with the machine busy (load 1.6 per core): the run "
                                    "may be faster when the bot is quiet")


class RetrainRecorder:
    """What /retrain's Telegram view would show (bot.services.training.service.RetrainView, RunView), recorded."""

    def __init__(self):
        self.events: list = []

    async def planning(self):
        self.events.append("planning")

    def plan_progress(self, progress):
        self.events.append(("plan_progress", progress.stage))

    async def resuming(self, run_id: int):
        self.events.append(("resuming", run_id))
        return self

    def progress(self, job):
        self.events.append("run_progress")

    def stop(self):
        self.events.append("stop")

    async def finish(self, outcome: RunOutcome):
        self.events.append(("finish", outcome.run_id, outcome.status))


async def test_retrain_is_one_call_a_plan_kept_only_when_ready_nothing_while_busy_none_to_resume(service):
    await fill(service)
    view = RetrainRecorder()
    done = await service.retrain(BY_ADMIN, view, force=True)
    assert done.busy is None and done.resumed is None and done.plan.ready and done.plan.force
    assert view.events[0] == "planning" and ("plan_progress", "reading") in view.events
    assert service.take_plan(done.plan.token) is done.plan  # kept for the Start button
    service.options.min_examples = 99
    refused = (await service.retrain(BY_ADMIN, RetrainRecorder())).plan
    assert not refused.ready and service.take_plan(refused.token) is None  # no button may start it
    view = RetrainRecorder()
    assert (await service.retrain(BY_ADMIN, view, resume=True)).resumed is None and view.events == []
    run = await service.start(done.plan, requested_by=BY_ADMIN)
    assert (await service.retrain(BY_ADMIN, view)).busy is service.job and service.job.run_id == run.id
    assert view.events == []  # no plan while a run is in flight


async def test_retrain_resume_reserves_the_stopped_run_and_runs_it_in_the_background(service):
    await fill(service)
    run = await service.start(await service.plan(), requested_by=BY_ADMIN)
    service.job = None  # the process that started it is gone; its checkpoint stayed
    service.paths(run.id).out.mkdir(parents=True)
    service.paths(run.id).checkpoint.write_bytes(b"not a real checkpoint")  # lm.train fails on it at once
    async with service.sessions() as s:
        await training_db.update_run(s, run.id, status="resumable", heldout_loss_before=1.0)
    view = RetrainRecorder()
    done = await service.retrain(BY_ADMIN, view, resume=True)
    assert done.resumed.id == run.id and service.job.run_id == run.id  # reserved before the call returned
    await service.task
    assert view.events[0] == ("resuming", run.id) and "planning" not in view.events
    assert view.events[-2:] == ["stop", ("finish", run.id, "resumable")]  # its checkpoint is still there
    assert not service.busy
