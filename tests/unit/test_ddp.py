"""DDP: `torchrun --nproc_per_node 2 -m lm.train` on CPU (gloo) keeps both replicas identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_two_cpu_ranks_end_with_identical_trained_weights(tmp_path):
    (tmp_path / "c.txt").write_text("distributed data parallel on two cpu processes. " * 80)
    hashes = tmp_path / "hashes"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lm.train", "--data", str(tmp_path / "c.txt"), "--out", str(tmp_path / "run"), "--char",
           "--n-layers", "1", "--n-heads", "2", "--dim", "16", "--block-size", "16", "--batch", "4",
           "--steps", "6", "--warmup", "1", "--eval-interval", "0", "--eval-batches", "2", "--no-progress",
           "--threads", "1", "--hash-out", str(hashes)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    init = [(hashes / f"init.rank{r}").read_text() for r in (0, 1)]
    final = [(hashes / f"final.rank{r}").read_text() for r in (0, 1)]
    assert init[0] == init[1]  # same seed, same start
    assert final[0] == final[1]  # averaged gradients keep the replicas in lock-step
    assert final[0] != init[0]  # and they did train
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["status"] == "done"
    assert summary["tokens"] == 6 * 4 * 16 * 2
    assert (tmp_path / "run" / "model.safetensors").is_file()  # written once, by rank 0
