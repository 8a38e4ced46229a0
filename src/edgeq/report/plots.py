"""PNG plots for reports (matplotlib, headless). Each returns the file it wrote."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from edgeq.evaluate.per_layer import LayerError


def _finite(v: float | None, cap: float = 80.0) -> float:
    if v is None:
        return 0.0
    return cap if v == float("inf") else v


def per_layer_sqnr(errors: list[LayerError], path: Path, worst: int = 25) -> Path:
    """Horizontal bars, worst layers (lowest activation SQNR) at the top."""
    ranked = sorted(errors, key=lambda e: _finite(e.activation_sqnr_db, 1e9))[:worst]
    names = [e.name for e in ranked][::-1]
    act = [_finite(e.activation_sqnr_db) for e in ranked][::-1]
    wgt = [_finite(e.weight_sqnr_db) for e in ranked][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(names) + 1.6))
    ys = range(len(names))
    ax.barh([y + 0.2 for y in ys], act, height=0.4, label="output activation", color="#c0504d")
    ax.barh([y - 0.2 for y in ys], wgt, height=0.4, label="weight", color="#4f81bd")
    ax.set_yticks(list(ys), names, fontsize=7)
    ax.set_xlabel("SQNR vs FP32 (dB, higher is better)")
    ax.set_title(f"Per-layer SQNR, {len(names)} worst layers by activation SQNR")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def layer_histograms(error: LayerError, path: Path) -> Path:
    """Weight and activation histograms of one layer with its quantization grid."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
    w = error.weight.numpy()
    a1.hist(w, bins=200, color="#4f81bd", log=True)
    grid = error.weight_levels_grid.numpy()
    lo, hi = float(grid.min()), float(grid.max())
    step = max(1, len(grid) // 32)
    for g in grid[::step]:
        a1.axvline(g, color="gray", lw=0.4, alpha=0.5)
    a1.axvline(lo, color="k", lw=1.2, label="clipping range (worst channel)")
    a1.axvline(hi, color="k", lw=1.2)
    a1.set_title(f"{error.name}: weights ({error.weight_bits}-bit grid, every {step}th level)")
    a1.set_xlabel("weight value")
    a1.set_ylabel("count (log)")
    a1.legend(fontsize=7)
    if error.activation is not None:
        a2.hist(error.activation.numpy(), bins=200, color="#c0504d", log=True)
        if error.activation_range is not None:
            lo, hi = error.activation_range
            a2.axvline(lo, color="k", lw=1.2, label="quantized range")
            a2.axvline(hi, color="k", lw=1.2)
            a2.legend(fontsize=7)
        a2.set_title(f"{error.name}: float output activations (sample)")
        a2.set_xlabel("activation value")
        a2.set_ylabel("count (log)")
    else:
        a2.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tradeoff(
    points: dict[str, tuple[float, float]],
    xlabel: str,
    title: str,
    path: Path,
    *,
    ylabel: str = "top-1 accuracy (%)",
) -> Path:
    """Scatter of (x, fraction) per run/config, the fraction drawn in percent (top-1
    by default); a legend names the points (labels drawn next to points overlap when
    configs land on the same spot)."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    markers = "osD^vP*Xh<>p"
    for i, (label, (x, acc)) in enumerate(points.items()):
        ax.scatter(
            [x], [100 * acc], s=60, marker=markers[i % len(markers)], label=label, alpha=0.85
        )
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves(
    history: list[dict[str, float]],
    series: dict[str, str],
    ylabel: str,
    title: str,
    path: Path,
    *,
    percent: bool = False,
) -> Path:
    """One line per ``series`` (history key -> legend label) over the epochs, a marker
    on every epoch (a one-epoch run is one point per line); ``percent`` draws fractions
    in percent."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    epochs = [row["epoch"] for row in history]
    scale = 100.0 if percent else 1.0
    for key, label in series.items():
        ys = [scale * row[key] if key in row else float("nan") for row in history]
        ax.plot(epochs, ys, marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_xticks(epochs)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
