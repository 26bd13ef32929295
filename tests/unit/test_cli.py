"""The docent command line refuses bad flag values with a clear message before loading anything."""

from __future__ import annotations

import pytest

from bot.cli.main import build_parser


def refused(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--max-new-tokens", "0", "must be >= 1, not 0"),
    ("--max-new-tokens", "ten", "'ten' is not an integer"),
    ("--temperature", "-0.5", "must be >= 0, not -0.5"),
    ("--top-k", "-1", "must be >= 0, not -1"),
    ("--top-p", "0", "must be > 0 and <= 1, not 0"),
    ("--top-p", "1.5", "must be > 0 and <= 1, not 1.5"),
    ("--repetition-penalty", "0", "must be > 0, not 0"),
])
def test_bad_sampling_values_are_refused_with_the_accepted_range(flag, value, says, capsys):
    err = refused(["generate", "hi", flag, value], capsys)
    assert says in err and flag in err


def test_good_sampling_values_are_taken():
    args = build_parser().parse_args(["generate", "hi", "--max-new-tokens", "1", "--temperature", "0",
                                      "--top-k", "0", "--top-p", "1", "--repetition-penalty", "1.1"])
    assert (args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.repetition_penalty) == (1, 0.0, 0, 1.0, 1.1)


def test_eval_wants_a_positive_limit_and_k(capsys):
    assert "must be >= 1, not 0" in refused(["eval", "qa", "--dataset", "x.json", "--limit", "0"], capsys)
    assert "must be >= 1, not -3" in refused(["eval", "retrieval", "--dataset", "x.json", "--k", "-3"], capsys)
    assert build_parser().parse_args(["eval", "qa", "--dataset", "x.json", "--limit", "5"]).limit == 5


def test_default_logging_keeps_warnings_and_our_own_progress_and_v_shows_everything(caplog):
    import logging

    from bot.cli.main import configure_logging

    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        for verbose, library_info_shown in ((False, False), (True, True)):
            configure_logging(verbose)
            handler = root.handlers[0]
            records = [logging.LogRecord(name, level, __file__, 1, "m", None, None) for name, level in (
                ("alembic.runtime.migration", logging.INFO), ("faiss.loader", logging.INFO),
                ("bm25s", logging.DEBUG), ("bot.services.knowledge", logging.INFO), ("lm.train", logging.INFO),
                ("alembic.runtime.migration", logging.WARNING))]
            shown = [bool(handler.filter(r)) and r.levelno >= root.level for r in records]
            assert shown == [library_info_shown, library_info_shown, library_info_shown, True, True, True]
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


def test_eval_chat_takes_a_model_and_a_token_cap_and_qa_still_needs_a_dataset(capsys):
    args = build_parser().parse_args(["eval", "chat", "--model", "smollm2-135m", "--max-new-tokens", "64"])
    assert (args.what, args.dataset, args.model, args.max_new_tokens) == ("chat", None, "smollm2-135m", 64)
    assert "must be >= 1, not 0" in refused(["eval", "chat", "--max-new-tokens", "0"], capsys)
    args = build_parser().parse_args(["eval", "qa"])
    with pytest.raises(SystemExit, match="--dataset is required"):
        args.func(args, None)
