"""`docent ingest`, `docent ask`, `docent summarize`: the document features from the command line.

They use the same services, database and index files as the bot, so `docent ingest report.pdf --scope
work` followed by `docent ask "..." --scope work` behaves like uploading and asking in Telegram.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from pathlib import Path

from bot.config import Settings

log = logging.getLogger(__name__)


def _cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from bot.documents.parse import DocumentError
    from bot.services import open_services

    async def run() -> int:
        engine, services = await open_services(settings)
        kb, failures = services.knowledge, 0
        try:
            await kb.discard_unfinished(args.scope)  # an earlier ingest into this scope that was killed
            for path in args.paths:
                bar = tqdm(total=100, desc=Path(path).name, unit="%", leave=True)

                def progress(stage: str, frac: float, bar=bar) -> None:
                    bar.set_postfix_str(stage)
                    bar.update(max(0, round(frac * 100) - bar.n))

                try:
                    result = await kb.ingest(args.scope, Path(path).read_bytes(), Path(path).name, progress=progress)
                except (DocumentError, OSError) as e:
                    bar.close()
                    print(f"{path}: {getattr(e, 'message', e)}", file=sys.stderr)
                    failures += 1
                    continue
                except Exception:  # our failure on this file: say so, keep going with the next ones
                    bar.close()
                    log.exception("ingest of %s failed", path)
                    print(f"{path}: indexing failed on our side (see the log above); nothing was stored",
                          file=sys.stderr)
                    failures += 1
                    continue
                bar.close()
                what = "already indexed" if result.duplicate else "indexed"
                pages = f"{result.pages} page{'' if result.pages == 1 else 's'}, " if result.pages else ""
                chunks = f"{result.chunks} chunk" + ("" if result.chunks == 1 else "s")
                print(f"{path}: {what} as {result.document.name!r} ({pages}{chunks}) in scope {args.scope!r}")
        finally:
            await engine.dispose()
        return 1 if failures else 0

    return asyncio.run(run())


def _cmd_ask(args: argparse.Namespace, settings: Settings) -> int:
    from bot.services import open_services
    from bot.services.answer import answer_question

    if args.model:  # loaded by the services in place of the configured model
        settings = dataclasses.replace(settings, model=dataclasses.replace(settings.model, name=args.model))

    async def run():
        engine, services = await open_services(settings)
        try:
            if not await services.knowledge.has_documents(args.scope):
                return None
            model = await services.models.current()
            return await answer_question(args.question, knowledge=services.knowledge, model=model, scope=args.scope,
                                         force=True)
        finally:
            services.models.close()  # before exit (see ChatModel.close)
            await engine.dispose()

    result = asyncio.run(run())
    if result is None:
        print(f"scope {args.scope!r} has no documents; add some with `docent ingest PATH --scope {args.scope}`",
              file=sys.stderr)
        return 1
    print(result.render())
    return 0


def _cmd_summarize(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from bot.documents.parse import DocumentError, parse_document

    if args.model:  # loaded in place of the configured model
        settings = dataclasses.replace(settings, model=dataclasses.replace(settings.model, name=args.model))
    try:
        doc = parse_document(Path(args.path), Path(args.path).name, **settings.documents.parse_limits())
    except DocumentError as e:
        print(f"{args.path}: {e.message}", file=sys.stderr)
        return 1
    bar = tqdm(desc="summarizing", unit="part")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    text = _summary_text([s.text for s in doc.sections], settings, args.writing or settings.documents.summary_writing,
                         progress)
    bar.close()
    print(text or f"{args.path}: no sentences to summarize")
    return 0


def _summary_text(pieces: list[str], settings: Settings, writing: str, progress) -> str:
    """The summary as the bot would show it: written by the chat model when `writing` lets it (map-reduce,
    every sentence checked), else extracted."""
    from bot.services.summaries import as_summary, model_writes
    from bot.services.summary_pipeline import summarize
    from lm import hub
    from lm.encoder import Encoder

    if writing != "extract":
        from bot.services.lm_gateway import ChatModel
        from bot.services.summary_writer import model_writer, section_budget, write_summary

        model = ChatModel.load(settings)
        try:
            if model_writes(writing, model):
                written = write_summary(pieces, model_writer(model), model.count_tokens, progress=progress,
                                        section_tokens=section_budget(model.context_tokens))
                if written.sentences:
                    return as_summary(written).text
        finally:
            model.close(wait=True, cancel=True)  # before exit (see ChatModel.close)
    encoder = Encoder.load(hub.resolve(settings.documents.encoder, settings.cache_dir))
    return summarize(pieces, encoder, progress=progress).text


def register(sub) -> None:
    p = sub.add_parser("ingest", help="index documents into a scope")
    p.add_argument("paths", nargs="+")
    p.add_argument("--scope", default="default", help="the collection to add to (default: %(default)s)")
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("ask", help="answer a question from a scope's documents, with sources")
    p.add_argument("question")
    p.add_argument("--scope", default="default")
    p.add_argument("--model")
    p.set_defaults(func=_cmd_ask)

    p = sub.add_parser("summarize", help="summarize a whole document, as /summarize does")
    p.add_argument("path")
    p.add_argument("--model", help="the chat model that writes (a hub name or a path; default: [model] name)")
    p.add_argument("--writing", choices=["auto", "model", "extract"],
                   help="who writes the summary (default: [documents] summary_writing)")
    p.set_defaults(func=_cmd_summarize)
