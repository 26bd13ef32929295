"""The `docent` command: run, chat, generate, model, db, ingest, ask, summarize, train, eval.

Heavy imports (torch, telegram) happen inside the sub-commands so that `docent --help` and
`docent model list` answer instantly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from bot.cli.args import bounded
from bot.config import Settings, load_settings


def _cmd_model(args: argparse.Namespace, settings: Settings) -> int:
    from bot.services import model_catalog

    if args.action == "pull":
        names = args.names or [settings.model.name, settings.documents.encoder]
        for name in names:
            print(model_catalog.pull(settings, name, measure_speed=not args.no_measure,
                                     say=lambda line: print(line, file=sys.stderr)))
        return 0
    print(model_catalog.format_listing(model_catalog.listing(settings), settings.model.name))
    return 0


def _cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from bot.db.session import downgrade, upgrade

    if args.action == "upgrade":
        asyncio.run(upgrade(settings.database_url, args.revision or "head"))
    else:
        asyncio.run(downgrade(settings.database_url, args.revision or "-1"))
    print(f"database {args.action}d to {args.revision or ('head' if args.action == 'upgrade' else '-1')}")
    return 0


def _generation_overrides(args: argparse.Namespace) -> dict:
    keys = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from bot.services.local_chat import generate_once

    return generate_once(settings, args.prompt, model=args.model, raw=args.raw, **_generation_overrides(args))


def _cmd_chat(args: argparse.Namespace, settings: Settings) -> int:
    from bot.services.local_chat import terminal_chat

    return terminal_chat(settings, model=args.model, **_generation_overrides(args))


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from bot.services.openai_server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(settings, args.host, args.port, extensions=not args.standard_only))
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    if args.check:
        from bot.services.preflight import preflight

        checks = asyncio.run(preflight(settings))
        print("\n".join(c.line() for c in checks))
        return 0 if all(c.ok for c in checks) else 1
    if not settings.telegram.token:
        print("docent run: no Telegram bot token configured. Set DOCENT_TELEGRAM_TOKEN (or [telegram] token in "
              "config.toml). `docent chat` works without one.", file=sys.stderr)
        return 2
    from bot.app import run_bot

    return run_bot(settings)


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="hub name, .gguf path or trained model directory (default: settings)")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=bounded(int, 1))
    p.add_argument("--temperature", type=bounded(float, 0), help="0 = greedy")
    p.add_argument("--top-k", dest="top_k", type=bounded(int, 0), help="0 = no limit")
    p.add_argument("--top-p", dest="top_p", type=bounded(float, 0, 1, low_open=True))
    p.add_argument("--repetition-penalty", dest="repetition_penalty", type=bounded(float, 0, low_open=True),
                   help="1 = off")
    p.add_argument("--seed", type=int)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="docent", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="path to a config.toml (default: $DOCENT_CONFIG or ./config.toml)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="start the Telegram bot")
    p.add_argument("--check", action="store_true", help="check the configuration, token, database and models, "
                                                         "print what is wrong, and exit (1 if anything is)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("serve", help="serve the chat model (and the encoder) over an OpenAI-compatible HTTP API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--standard-only", action="store_true",
                   help="serve the standard OpenAI API only, without docent's extensions (queue position, span "
                        "scoring), as a foreign server would: to check how replicas do with one")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("chat", help="chat with the model in the terminal")
    _add_sampling_flags(p)
    p.set_defaults(func=_cmd_chat)

    p = sub.add_parser("generate", help="complete one prompt and print the reply")
    p.add_argument("prompt")
    p.add_argument("--raw", action="store_true", help="continue the text as is, without the chat template")
    _add_sampling_flags(p)
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("model", help="pull (fetch, convert, measure) or list named models")
    p.add_argument("action", choices=["pull", "list"])
    p.add_argument("names", nargs="*", help="default: the configured chat model and encoder")
    p.add_argument("--no-measure", action="store_true", help="pull: skip measuring the speed here")
    p.set_defaults(func=_cmd_model)

    p = sub.add_parser("db", help="apply or revert database migrations")
    p.add_argument("action", choices=["upgrade", "downgrade"])
    p.add_argument("revision", nargs="?")
    p.set_defaults(func=_cmd_db)

    _extra_commands(sub)
    return parser


def _extra_commands(sub) -> None:
    """Commands whose services live in their own modules (documents, evaluation, training)."""
    from bot.cli import document_commands
    from bot.cli import eval as cli_eval
    from bot.cli import train as cli_train

    document_commands.register(sub)
    cli_eval.register(sub)
    cli_train.register(sub)


OWN_LOGGERS = ("bot", "lm")


class OwnProgress(logging.Filter):
    """Lets through warnings from anyone and everything of our own (bot.*, lm.*)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".", 1)[0] in OWN_LOGGERS


def configure_logging(verbose: bool) -> None:
    """Warnings from everyone and our own progress; with -v, everything.

    Libraries are quiet by default: Alembic announces each plugin and migration, faiss which CPU builds it
    tried, httpx every Bot API request, and bm25s sets its own logger to DEBUG when imported. A filter on
    the handler, not logger levels, so that a library importing later cannot undo it.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(OwnProgress())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "pass_through", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    configure_logging(args.verbose)
    try:
        settings = load_settings(args.config)
        return args.func(args, settings) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # errors a person can cause get one clear line, not a traceback
        from lm.hub import HubError

        known = (HubError, FileNotFoundError, ValueError)
        if isinstance(e, known) and not args.verbose:
            print(f"docent: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
