"""deploy/docent.service is a unit systemd accepts, and it runs the checks before the bot."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "docent.service"


def test_the_unit_checks_before_it_starts_and_restarts_on_failure():
    lines = UNIT.read_text().splitlines()
    assert "ExecStartPre=/var/lib/docent/app/.venv/bin/docent run --check" in lines
    assert "ExecStart=/var/lib/docent/app/.venv/bin/docent run" in lines
    assert "Restart=on-failure" in lines and "WantedBy=multi-user.target" in lines


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_accepts_the_unit(tmp_path):
    unit = tmp_path / "docent.service"  # pointed at this checkout, whose .venv/bin/docent exists
    unit.write_text(UNIT.read_text().replace("/var/lib/docent/app", str(ROOT)))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
