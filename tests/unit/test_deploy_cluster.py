"""deploy/cluster/: the settings every role shares load as a cluster (webhook, PostgreSQL, model workers), the
replica unit checks before it starts and takes its port from its instance, the worker unit runs `docent serve`,
and systemd accepts both units where systemd-analyze is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bot.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "deploy" / "cluster"


def test_the_cluster_settings_make_webhook_replicas_of_one_database_using_workers():
    settings = load_settings(CLUSTER / "cluster.toml", env={})
    assert settings.telegram.mode == "webhook" and settings.telegram.webhook_url.endswith("/telegram")
    assert settings.database_url.startswith("postgresql+asyncpg://")
    assert settings.model.backend == "openai" and settings.model.url.endswith("/v1")
    proxy = (CLUSTER / "nginx.conf").read_text()
    assert "location = /telegram" in proxy and "proxy_pass http://docent_replicas/telegram;" in proxy


def test_the_units_check_a_replica_before_it_starts_and_run_the_worker():
    replica = (CLUSTER / "docent-replica@.service").read_text().splitlines()
    assert "Environment=DOCENT_TELEGRAM_WEBHOOK_PORT=%i" in replica
    assert "ExecStartPre=/var/lib/docent/app/.venv/bin/docent run --check" in replica
    worker = (CLUSTER / "docent-worker.service").read_text().splitlines()
    assert "ExecStart=/var/lib/docent/app/.venv/bin/docent serve --host 0.0.0.0 --port 8000" in worker


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
@pytest.mark.parametrize("unit", ["docent-replica@8441.service", "docent-worker.service"])
def test_systemd_accepts_the_units(tmp_path, unit):
    source = CLUSTER / ("docent-replica@.service" if unit.startswith("docent-replica") else unit)
    path = tmp_path / unit
    path.write_text(source.read_text().replace("/var/lib/docent/app", str(ROOT)))
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
