"""What a training run reports: lm.train's metrics as they are written, the loss curve, the promotion rule and
the outcome of a run (data; the admin's wording of it is bot.telegram.texts)."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from bot.db.tables import ModelVersion


def should_promote(after: float | None, before: float | None, force: bool = False) -> bool:
    """The promotion rule: strictly lower held-out loss than the active model on the same examples."""
    if force:
        return after is not None
    return after is not None and before is not None and after < before


class MetricsTail:
    """The JSON records appended to a metrics.jsonl since the last read (a half-written line waits)."""

    def __init__(self, path: Path, from_end: bool = False):
        self.path = Path(path)
        self.offset = self.path.stat().st_size if from_end and self.path.exists() else 0
        self._partial = b""

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                if line.strip():
                    out.append(json.loads(line))
        return out


def read_metrics(path: Path) -> list[dict]:
    return MetricsTail(path).read()


def plot_loss_curve(records: list[dict], path: Path, before: float | None = None, title: str = "") -> Path:
    """Training and held-out loss per step as a PNG (matplotlib's Agg canvas: no display, no global state)."""
    from matplotlib.backends.backend_agg import (
        FigureCanvasAgg,  # lazy: matplotlib takes 0.4 s, paid per drawn curve
    )
    from matplotlib.figure import Figure

    steps = [r for r in records if not r.get("summary") and "loss" in r]
    evals = [r for r in steps if "eval_loss" in r]
    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1.2, label="training loss")
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="held-out loss")
    if before is not None:
        ax.axhline(before, ls="--", color="gray", label=f"held-out before ({before:.3f})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


@dataclass
class RunOutcome:
    run_id: int
    status: str  # succeeded | resumable | cancelled | failed
    before: float | None = None
    after: float | None = None
    version: ModelVersion | None = None
    promoted: bool = False
    forced: bool = False
    plot: Path | None = None
    steps: int = 0
    step: int = 0
    before_error: str | None = None  # why the active model's held-out loss could not be measured
    load_failed: bool = False  # the new version should have been promoted but did not load
    error: str = ""  # why a run ended without a model (as stored in its row)

    @property
    def promoted_by_force(self) -> bool:
        """Active only because the admin forced it: its held-out loss alone would not have promoted it."""
        return self.promoted and self.forced and not should_promote(self.after, self.before)
