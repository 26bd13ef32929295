"""`docent ingest` as a user runs it: its result on stdout, and no library chatter on stderr."""

from __future__ import annotations

import os
import subprocess
import sys


def test_ingest_prints_its_result_and_no_library_info(tmp_path):
    doc = tmp_path / "apollo.txt"
    doc.write_text("The launch of Apollo 11 happened in July 1969. It carried three astronauts.\n")
    env = {**os.environ, "DOCENT_DATA_DIR": str(tmp_path / "data")}
    env.pop("DOCENT_CONFIG", None)
    done = subprocess.run([sys.executable, "-m", "bot.cli", "ingest", str(doc)], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("indexed as 'apollo.txt' (1 chunk) in scope 'default'")
    for noise in ("alembic", "faiss", "bm25s", "rebuilding index", " INFO ", " DEBUG "):
        assert noise not in done.stderr, done.stderr[-2000:]
