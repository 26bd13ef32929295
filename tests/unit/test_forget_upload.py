"""/forget and /summarize of an upload still being indexed (bot.services.uploads.Uploads.forget,
bot.services.summaries): /summarize says it is still being indexed; /forget by its uploader stops the indexing
(nothing is stored), by anyone else is refused, and an indexing already past its last step when asked is forgotten
as soon as it has ended. Real services over SQLite with the real MiniLM encoder; the upload's download and its
status line are the test's, as the Telegram handler's are in the bot."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.services import open_services
from bot.services.chat_settings import Origin
from bot.services.long_jobs import CANCELLED
from tests.unit.test_knowledge import REPORT, settings_for

pytestmark = pytest.mark.integration
CHAT, ANN, BEN = -100950, 951, 952


def origin(user_id: int) -> Origin:
    return Origin(chat_id=CHAT, chat_type="group", user_id=user_id, username=None, first_name="U", title="team")


class Status:
    """An upload's status line, as the handler's UploadStatus: what it was told."""

    def __init__(self, at_stage: str | None = None, then=None, jobs=None):
        self.stages, self.outcome, self.at_stage, self.then, self.jobs = [], None, at_stage, then, jobs
        self.rows_at_start = None

    async def start(self) -> int:
        if self.jobs is not None:  # what a restart would find, were the process to die as this line is shown
            self.rows_at_start = [(j.label, j.status_message_id) for j in await self.jobs.recover()]
        return 7

    def progress(self, stage: str, fraction: float) -> None:
        self.stages.append(stage)
        if stage == self.at_stage:
            self.then()

    async def finish(self, outcome) -> None:
        self.outcome = outcome


class SummaryView:
    def __init__(self):
        self.outcome = None

    async def start(self, label: str) -> int:
        raise AssertionError("nothing to summarize yet")

    def progress(self, part: int, parts: int) -> None: ...

    async def finish(self, outcome) -> None:
        self.outcome = outcome


async def test_forget_of_an_upload_being_indexed_stops_it_for_its_uploader_only(tmp_path: Path):
    engine, services = await open_services(settings_for(tmp_path, window_sentences=2))
    released, said = asyncio.Event(), []

    async def download() -> bytes:  # the upload is being fetched: its job runs, no document row exists yet
        await released.wait()
        return REPORT

    async def stopping(name: str) -> None:
        said.append(name)

    try:
        status = Status()
        upload = asyncio.create_task(services.uploads.index(origin(ANN), "ferrets.txt", "ferrets.txt", "text/plain",
                                                            download, status))
        while not services.jobs.running("ingest", CHAT):
            await asyncio.sleep(0.01)
        view = SummaryView()
        await services.summaries.summarize(origin(BEN), "ferrets", view)
        assert (view.outcome.status, view.outcome.detail) == ("still_indexing", "ferrets.txt")

        refused = await services.uploads.forget(origin(BEN), "ferrets.txt", any_document=False, stopping=stopping)
        assert refused.status == "not_allowed" and said == [] and services.jobs.running("ingest", CHAT)

        forgetting = asyncio.create_task(services.uploads.forget(origin(ANN), "ferrets.txt", any_document=False,
                                                                 stopping=stopping))
        while not said:
            await asyncio.sleep(0.01)
        released.set()
        outcome = await forgetting
        assert (outcome.status, outcome.name, said) == ("stopped", "ferrets.txt", ["ferrets.txt"])
        assert status.outcome is not None, "the upload's status line showed how it ended before /forget said so"
        assert ((await upload).status, status.outcome.detail) == ("stopped", CANCELLED)
        assert await services.knowledge.documents(f"chat:{CHAT}") == []
    finally:
        await engine.dispose()


async def test_an_upload_past_its_last_step_is_forgotten_once_indexed(tmp_path: Path):
    engine, services = await open_services(settings_for(tmp_path, window_sentences=2))
    forgetting: list[asyncio.Task] = []

    async def download() -> bytes:
        return REPORT

    async def stopping(name: str) -> None: ...

    def forget_now() -> None:  # /forget arrives when the document is stored and its indexing has no step left
        forgetting.append(asyncio.get_running_loop().create_task(
            services.uploads.forget(origin(ANN), "ferrets.txt", any_document=True, stopping=stopping)))

    try:
        status = Status(at_stage="indexing", then=forget_now)
        await services.uploads.index(origin(ANN), "ferrets.txt", "ferrets.txt", "text/plain", download, status)
        outcome = await forgetting[0]
        assert status.outcome.status == "indexed", "too late to stop: the indexing ended as usual"
        assert outcome.status == "forgotten_when_indexed" and outcome.forgotten.document.name == "ferrets.txt"
        assert await services.knowledge.documents(f"chat:{CHAT}") == []
    finally:
        await engine.dispose()


async def test_an_uploads_status_line_is_shown_only_once_its_job_is_stored(tmp_path: Path):
    """A restart finds every status line an upload showed: the job's row is written before the line is sent (a
    kill between the two then finds the job, and tells its user in a new message), and records the line once
    sent. A line sent before the row left "Indexing …" on screen for good when the process died in between."""
    engine, services = await open_services(settings_for(tmp_path, window_sentences=2))
    rows_while_indexing = []

    async def download() -> bytes:
        rows_while_indexing.extend((j.label, j.status_message_id) for j in await services.jobs.recover())
        return REPORT

    try:
        status = Status(jobs=services.jobs)
        await services.uploads.index(origin(ANN), "ferrets.txt", "ferrets.txt", "text/plain", download, status)
        assert status.rows_at_start == [("ferrets.txt", None)]
        assert rows_while_indexing == [("ferrets.txt", 7)]
        assert status.outcome.status == "indexed" and await services.jobs.recover() == []
    finally:
        await engine.dispose()
