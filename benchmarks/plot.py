"""Results -> a PNG of model-only throughput against batch size, one line per engine (end to end as a point)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def plot_throughput(results: dict[str, Any], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for engine in results["engines"].values():
        if "speed" not in engine:
            continue
        batches = [int(batch) for batch in engine["speed"]]
        qps = [figures["queries_per_s"] for figures in engine["speed"].values()]
        medians = [q["median"] for q in qps]
        errors = [[m - q["min"] for m, q in zip(medians, qps)], [q["max"] - m for m, q in zip(medians, qps)]]
        axes.errorbar(batches, medians, yerr=errors, marker="o", capsize=3, label=engine["label"])
    e2e = results["end_to_end"]
    if e2e is not None:
        axes.plot([e2e["batch_size"]], [e2e["queries_per_s"]["median"]], "k*", markersize=12,
                  label="cnm-run end to end (fp32)")
    axes.set_xscale("log", base=2)
    batch_sizes = results["settings"]["batch_sizes"]
    axes.set_xticks(batch_sizes, labels=[str(batch) for batch in batch_sizes])
    axes.minorticks_off()
    axes.set_xlabel("batch size")
    axes.set_ylabel("queries/s (median, bars: min-max of rounds)")
    machine = results["machine"]
    axes.set_title(f"{machine['cpu']}, {machine['cores']} cores, {machine['gpu'] or 'no GPU'}", fontsize=9)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
