"""Reports of a federation run: ``report.json``, ``report.csv`` and ``report.png`` next to its metrics."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedcodec.model_io import atomic_write_bytes, write_json

CSV_COLUMNS = ["round", "hospitals", "rejected", "failed", "train_loss", "train_bpp", "eval_bpp", "eval_dice",
               "bytes_sent", "bytes_received", "epsilon_central", "epsilon_sample", "seconds"]


def write_report(out_dir: str | Path, scenario: Mapping[str, Any], status: Mapping[str, Any],
                 measures: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Summarise ``out_dir/metrics.json`` of a run into report files in ``out_dir``; returns their paths.

    ``report.json`` is written even when the run failed before writing metrics: it then holds the status, the
    wall time and the memory measures, and no rounds.
    """
    out = Path(out_dir)
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {"run": {}, "rounds": []}
    rows = metrics["rounds"]
    m = dict(measures or {})
    report = {"status": status.get("status", "unknown"), "wall_s": m.get("wall_s"),
              "peak_rss_mb": m.get("peak_rss_mb"), "peak_pss_mb": m.get("peak_pss_mb"), "measures": m,
              "scenario": dict(scenario), "flower": dict(status), "summary": metrics.get("summary", {}),
              "run": {k: v for k, v in metrics["run"].items() if k != "run_config"},
              "rounds": [{k: r.get(k) for k in CSV_COLUMNS} for r in rows]}
    paths = {"json": out / "report.json"}
    write_json(paths["json"], report)
    if not rows:
        return paths
    paths.update({"csv": out / "report.csv", "png": out / "report.png"})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow(["" if r.get(k) is None else r.get(k) for k in CSV_COLUMNS])
    atomic_write_bytes(paths["csv"], buf.getvalue().encode())
    plot_rounds(rows, paths["png"], title=f"{scenario.get('name', '')}: {scenario.get('description', '')}")
    return paths


def plot_rounds(rows: list[dict], path: Path, title: str = "") -> None:
    """Held-out Dice and bpp per round, and epsilon when DP was on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = [r for r in rows if r.get("eval_dice") is not None]
    eps_c = [(r["round"], r["epsilon_central"]) for r in rows if r.get("epsilon_central")]
    eps_s = [(r["round"], r["epsilon_sample"]) for r in rows if r.get("epsilon_sample")]
    ncols = 3 if (eps_c or eps_s) else 2
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.4))
    axes[0].plot([r["round"] for r in ev], [r["eval_dice"] for r in ev], "o-")
    axes[0].set(xlabel="round", ylabel="held-out Dice (mean over qualities)")
    axes[1].plot([r["round"] for r in ev], [r["eval_bpp"] for r in ev], "o-", color="tab:orange")
    axes[1].set(xlabel="round", ylabel="held-out bpp (real bytes)")
    if ncols == 3:
        if eps_c:
            axes[2].plot(*zip(*eps_c), "o-", label="central (client-level)")
        if eps_s:
            axes[2].plot(*zip(*eps_s), "s-", label="sample-level (max hospital)")
        axes[2].set(xlabel="round", ylabel="epsilon")
        axes[2].legend()
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
