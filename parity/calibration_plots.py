"""One plot per calibrated threshold (calibration/<field>.png): where the safe, the unsafe and the
noise-baseline runs fall, where the threshold was and where calibration put it, and its ROC.
Deterministic like every plot here (parity/plots.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from paritybed.parity.calibration import CALIBRATED, Run, Threshold, critical, noise_value
from paritybed.parity.plots import BAD, LIMIT, PROD, plt, save_figure

SAFE, NOISE = "#1b7837", "#999999"


def _jitter(n: int, row: float) -> np.ndarray:
    return row + np.linspace(-0.25, 0.25, n) if n > 1 else np.full(n, row)


def plot_threshold(t: Threshold, runs: list[Run], noise: list[Run], doc: dict[str, Any], path: Path) -> Path:
    m = doc["metrics"][t.key]
    fig, (ax, roc_ax) = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [2.2, 1]})
    rows = (("unsafe", [critical(r, t) for r in runs if not r.safe], BAD),
            ("safe", [critical(r, t) for r in runs if r.safe], SAFE),
            ("noise", [noise_value(r, t) for r in noise], NOISE))
    finite = [v for _, vals, _ in rows for v in vals if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    pad = (hi - lo) * 0.05 or 0.05
    for y, (name, vals, colour) in enumerate(rows):
        # a run that never fails this metric (every value under its noise floor) is drawn at the edge
        edge = lo - pad if t.op == "<=" else hi + pad
        v = np.array([x if math.isfinite(x) else edge for x in vals], dtype=float)
        ax.scatter(np.sort(v), _jitter(len(v), y), s=14, color=colour, alpha=0.8, label=f"{name} ({len(v)})")
    ax.axvline(m["threshold"], color=PROD, lw=2, label=f"calibrated {t.op} {m['threshold']:g}")
    ax.axvline(m["default_before"], color=LIMIT, lw=1, ls="--", label=f"before {t.op} {m['default_before']:g}")
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_xlabel(f"{t.metric}: {'largest value above its noise floor' if t.op == '<=' else 'smallest value'} "
                  "over agent classes")
    ax.set_title(f"{t.key}" + ("  (closer to the noise than 3 sd)" if m.get("too_close_to_noise") else ""))
    ax.legend(fontsize=7, loc="upper right" if t.op == ">=" else "lower right")
    pts = m["roc"]["points"]
    if pts:
        roc_ax.plot([p[0] for p in pts], [p[1] for p in pts], color=PROD, marker=".", lw=1)
    roc_ax.plot([0, 1], [0, 1], color=NOISE, lw=0.8, ls=":")
    roc_ax.set_xlim(-0.02, 1.02)
    roc_ax.set_ylim(-0.02, 1.02)
    roc_ax.set_xlabel("safe runs failed")
    roc_ax.set_ylabel("unsafe runs caught")
    roc_ax.set_title(f"ROC, AUC {m['roc']['auc']}")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_all(runs: list[Run], noise: list[Run], doc: dict[str, Any], folder: Path) -> list[Path]:
    return [plot_threshold(t, runs, noise, doc, folder / f"{t.field}.png") for t in CALIBRATED]
