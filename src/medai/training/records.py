"""Run records: metrics table (CSV + JSON), training-curve PNG, KPIs."""

from __future__ import annotations

import csv
import io
import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from medai.fsutil import atomic_path, atomic_write_text

__all__ = ["peak_memory_mb", "plot_curve", "write_json", "write_metrics"]


def write_json(path: Path, data: Any) -> None:
    """Pretty JSON, written atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """``metrics.csv`` and ``metrics.json`` with one row per epoch."""
    write_json(run_dir / "metrics.json", rows)
    if not rows:
        return
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir / "metrics.csv", buffer.getvalue())


def plot_curve(run_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """``curve.png``: training loss and the validation figures per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = [r["epoch"] for r in rows]
    ax.plot(epochs, [r["train_loss"] for r in rows], label="train loss", color="tab:red")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    val_keys = sorted({k for r in rows for k in r if k.startswith("val_")})
    values: list[float] = []
    for key in val_keys:
        pts = [(r["epoch"], r[key]) for r in rows if r.get(key) not in (None, "")]
        if pts:
            ax2.plot(*zip(*pts, strict=True), marker="o", label=key[4:])
            values += [float(v) for _, v in pts]
    ax2.set_ylabel("validation")
    if values and min(values) >= 0.0 and max(values) <= 1.0:
        ax2.set_ylim(0, 1)
    fig.legend(loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path = run_dir / "curve.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (and peak CUDA allocation), MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
    out = {"peak_rss_mb": round(rss_mb, 1)}
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out
