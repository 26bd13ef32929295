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


def test_ingest_of_a_pdf_with_lone_surrogates_indexes_it_and_goes_on_to_the_next_files(tmp_path):
    from tests.support.hostile_files import RTF, surrogate_pdf

    (tmp_path / "cmap.pdf").write_bytes(surrogate_pdf())
    (tmp_path / "notes.rtf").write_bytes(RTF)
    (tmp_path / "apollo.txt").write_text("The launch of Apollo 11 happened in July 1969.\n")
    env = {**os.environ, "DOCENT_DATA_DIR": str(tmp_path / "data")}
    env.pop("DOCENT_CONFIG", None)
    done = subprocess.run([sys.executable, "-m", "bot.cli", "ingest", "cmap.pdf", "notes.rtf", "apollo.txt"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # one file refused
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("cmap.pdf: indexed as 'cmap.pdf' (1 page, 1 chunk)"), done.stdout
    assert lines[1].startswith("apollo.txt: indexed as 'apollo.txt'"), done.stdout
    assert "notes.rtf: notes.rtf is an RTF document. RTF is not supported yet" in done.stderr
