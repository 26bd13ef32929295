"""`docent generate` and `docent chat` end cleanly: the model's scheduler thread (lm.serve, a daemon) is stopped
and joined before the command returns. A daemon thread still inside torch while the interpreter finalizes
aborts the process ("terminate called without an active exception", exit code 134)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bot.config import Settings
from bot.services.local_chat import generate_once, terminal_chat
from tests.support.tiny_gguf import write_tiny_gguf

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    settings.model.name = str(write_tiny_gguf(tmp_path / "tiny.gguf").path)
    settings.model.weights, settings.model.max_new_tokens, settings.model.temperature = "fp32", 8, 0.0
    return settings


def serving_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "docent-serve" and t.is_alive()]


def test_generate_stops_the_scheduler_thread_before_it_returns(tiny_settings):
    before = len(serving_threads())
    assert generate_once(tiny_settings, "hi") == 0
    assert len(serving_threads()) == before


def test_chat_stops_the_scheduler_thread_at_end_of_input(tiny_settings):
    lines = iter(["hello", "again"])

    def read(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    before = len(serving_threads())
    assert terminal_chat(tiny_settings, read=read) == 0
    assert len(serving_threads()) == before


def _docent(tmp_path: Path, model: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCENT_")}
    env.update({"DOCENT_DATA_DIR": str(tmp_path / "data"), "DOCENT_CACHE_DIR": str(tmp_path / "cache"),
                "DOCENT_MODEL_NAME": str(model), "DOCENT_MODEL_WEIGHTS": "fp32",
                "DOCENT_CONFIG": str(tmp_path / "absent.toml")})
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], input=stdin, env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_the_commands_exit_with_code_0_run_after_run(tmp_path):
    model = write_tiny_gguf(tmp_path / "tiny.gguf").path
    for _ in range(2):
        done = _docent(tmp_path, model, "generate", "hi", "--max-new-tokens", "32")
        assert done.returncode == 0, done.stderr[-2000:]
        assert "terminate called" not in done.stderr
    done = _docent(tmp_path, model, "chat", "--max-new-tokens", "32", stdin="hello\nhow are you\n")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("docent> ") == 2
