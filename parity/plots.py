"""The report's plots (matplotlib, Agg backend, PNG).  Deterministic: fixed size, fixed DPI, no
timestamps in the files (``metadata`` cleared), so the same inputs give the same bytes.

* rate_<class>.png: requests per 5 minutes over one day, production vs staging, busiest replica,
  with the learned limit and the over-blocks marked;
* coverage.png: agent class x (type, interaction): production share, and what staging lacks;
* break_glass.png: lanes from activation to expiry, and the accesses under them;
* scope.png: declared vs observed scope per agent;
* over_blocks.png: over-blocks over the production run, per agent, with the attacks marked.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from paritybed.core.columns import codes, ints  # noqa: E402
from paritybed.core.units import DAY_NS, FIVE_MIN_NS, NS_PER_MIN  # noqa: E402
from paritybed.enforcer.kernel_abi import DENY  # noqa: E402
from paritybed.enforcer.policy import Policy  # noqa: E402
from paritybed.parity.profile import ClassProfile, Profile  # noqa: E402
from paritybed.parity.replay import Replay  # noqa: E402

PROD, STAG, BAD, LIMIT = "#1f4e79", "#e69f00", "#c0392b", "#555555"
META = {"Software": None}  # no version/timestamp in the PNG: byte-stable output


def save_figure(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=96, metadata=META)
    plt.close(fig)
    return path


def _busiest(c: ClassProfile, prefer_day: int | None = None) -> tuple[str, str] | None:
    best = None
    for rep, days in c.peak5.items():
        for d, v in days.items():
            key = (int(d) == prefer_day, v, -int(d), rep)
            if best is None or key > best[0]:
                best = (key, rep, d)
    return (best[1], best[2]) if best else None


def plot_rate(cls: str, sp: Profile, pp: Profile, policy: Policy | None, over_abs_ns: np.ndarray, path: Path) -> Path:
    p = pp.classes.get(cls, ClassProfile())
    s = sp.classes.get(cls, ClassProfile())
    day0 = (dt.date.fromisoformat(pp.first_day) - dt.date(1970, 1, 1)).days if pp.first_day else 0
    over_days = (over_abs_ns // DAY_NS - day0) if len(over_abs_ns) else np.zeros(0, dtype=np.int64)
    prefer = int(np.bincount(over_days).argmax()) if len(over_days) else None
    fig, ax = plt.subplots(figsize=(10, 3.6))
    x = np.arange(288) / 12.0
    title_day = ""
    pb = _busiest(p, prefer)
    if pb:
        ax.step(x, p.bins5[pb[0]][pb[1]], where="post", color=PROD, lw=1.4, label=f"production (replica {pb[0]})")
        title_day = (dt.date.fromisoformat(pp.first_day) + dt.timedelta(days=int(pb[1]))).strftime("%A %Y-%m-%d")
    sb = _busiest(s)
    if sb:
        ax.step(x, s.bins5[sb[0]][sb[1]], where="post", color=STAG, lw=1.2, label=f"staging (busiest day, replica {sb[0]})")
    limit = None
    if policy is not None:
        rates = [a.rate for a in policy.agents.values() if a.agent_class == cls and a.rate is not None]
        if rates:
            limit = min(FIVE_MIN_NS / r.interval_ns for r in rates)
            ax.axhline(limit, color=LIMIT, ls="--", lw=1, label=f"learned limit (~{limit:.0f} per 5 min per replica)")
    if pb and len(over_days):
        m = over_days == int(pb[1])
        if m.any():
            bins = np.bincount((over_abs_ns[m] % DAY_NS) // FIVE_MIN_NS, minlength=288)
            nz = np.nonzero(bins)[0]
            ax.bar(x[nz] + 1 / 24, bins[nz], width=1 / 12, color=BAD, alpha=0.7, label="over-blocked (all replicas)")
    ax.set_xlim(0, 24)
    ax.set_xticks(range(0, 25, 2))
    ax.set_xlabel("time of day (h)")
    ax.set_ylabel("requests per 5 min")
    ax.set_title(f"{cls}: requests per 5 minutes, busiest replica" + (f" — production {title_day}" if title_day else ""))
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.grid(alpha=0.25)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_coverage(sp: Profile, pp: Profile, path: Path) -> Path:
    classes = sorted(pp.classes)
    pairs = sorted({k for c in classes for k in pp.classes[c].pairs} | {k for c in sp.classes.values() for k in c.pairs})
    fig, ax = plt.subplots(figsize=(max(7, 0.45 * len(pairs) + 3), 2.4 + 0.6 * max(1, len(classes))))
    if not pairs or not classes:
        ax.text(0.5, 0.5, "no FHIR traffic", ha="center")
        ax.axis("off")
        return save_figure(fig, path)
    share = np.zeros((len(classes), len(pairs)))
    for i, c in enumerate(classes):
        tot = sum(pp.classes[c].pairs.values()) or 1
        for j, k in enumerate(pairs):
            share[i, j] = pp.classes[c].pairs.get(k, 0) / tot
    im = ax.imshow(np.where(share > 0, np.log10(np.maximum(share, 1e-6)), np.nan), cmap="Blues", aspect="auto",
                   vmin=-4, vmax=0)
    for i, c in enumerate(classes):
        sc = sp.classes.get(c, ClassProfile())
        for j, k in enumerate(pairs):
            inp, ins = share[i, j] > 0, sc.pairs.get(k, 0) > 0
            if inp and not ins:
                ax.text(j, i, "✗", ha="center", va="center", color=BAD, fontsize=13, fontweight="bold")
            elif inp and ins:
                ax.text(j, i, "✓", ha="center", va="center", color="white" if share[i, j] > 0.03 else "#1b7837",
                        fontsize=10, fontweight="bold")
            elif ins:
                ax.text(j, i, "s", ha="center", va="center", color=STAG, fontsize=8)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xticks(range(len(pairs)), [k.replace(".", " ") for k in pairs], fontsize=7, rotation=55, ha="right")
    cb = fig.colorbar(im, ax=ax, fraction=0.03)
    cb.set_label("production share (log10)")
    ax.set_title("Coverage: colour = production share; ✓ in staging, ✗ missing in staging, s = staging only",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _hhmm(t_ns: int) -> str:
    m = (t_ns % DAY_NS) // NS_PER_MIN
    return f"{m // 60:02d}:{m % 60:02d}"


def plot_break_glass(production: pa.Table, rep: Replay, path: Path) -> Path:
    ev = [e for e in rep.decisions.events if e["event"] in ("lane-open", "lane-refused")]
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.32 * max(1, min(len(ev), 40))))
    if not ev:
        ax.text(0.5, 0.5, "no break-glass activation in production", ha="center", va="center")
        ax.axis("off")
        return save_figure(fig, path)
    rows = production.take(pa.array([e["row"] for e in ev[:40]], type=pa.int64())).select(
        ["t_ns", "agent", "replica", "lane", "claim_id"]).to_pylist()
    claim = production["claim_id"].combine_chunks()
    lane_idx = np.nonzero(np.asarray(pc.not_equal(claim, "").to_numpy(zero_copy_only=False)))[0]
    sub = production.take(pa.array(lane_idx, type=pa.int64())).select(["t_ns", "agent", "replica", "claim_id", "kind"]).to_pylist()
    colors = {"code_blue": "#2166ac", "rapid_response": "#5aae61", "ed_triage": "#9970ab"}
    for y, (e, r) in enumerate(zip(ev[:40], rows)):
        if e["event"] == "lane-open":
            ax.barh(y, (e["expires_ns"] - r["t_ns"]) / 6e10, left=0, height=0.5, color=colors.get(r["lane"], "#888"),
                    alpha=0.45)
        else:
            ax.plot([0], [y], marker="x", color=BAD, ms=9)
        for i, a in zip(lane_idx.tolist(), sub):
            if a["kind"] == "fhir" and (a["agent"], a["replica"], a["claim_id"]) == (r["agent"], r["replica"], r["claim_id"]):
                bad = rep.decisions.decision[i] == DENY
                ax.plot([(a["t_ns"] - r["t_ns"]) / 6e10], [y], "|", color=BAD if bad else "black", ms=9, mew=2)
    ax.set_yticks(range(len(rows)), [f"{r['lane']} · {r['agent']}#{r['replica']} · day {r['t_ns'] // 86_400_000_000_000 + 1} "
                                     f"{_hhmm(r['t_ns'])}" for r in rows], fontsize=7)
    ax.set_xlabel("minutes since the activation")
    ax.set_title("Break-glass: each lane from activation to expiry (bar), refused activations (x), "
                 "accesses (| black allowed, red denied)", fontsize=9)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.25)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_scope(mn: dict[str, Any], path: Path) -> Path:
    agents = sorted(mn["agents"])
    fig, axes = plt.subplots(1, max(1, len(agents)), figsize=(4.2 * max(1, len(agents)), 4.2), squeeze=False)
    for ax, name in zip(axes[0], agents):
        a = mn["agents"][name]
        dec = {(p["type"], p["interaction"]) for p in a["declared_scope"]}
        obs = {(p["type"], p["interaction"]) for p in a["observed_scope"]}
        lane = {(p["type"], p["interaction"]) for p in a.get("observed_under_break_glass", [])} - obs - dec
        pairs = sorted(dec | obs | lane)
        for y, pr in enumerate(pairs):
            d, o = pr in dec, pr in obs
            color = "#1b7837" if d and o else (STAG if d else ("#9ecae1" if pr in lane else BAD))
            ax.barh(y, 1, color=color)
            ax.text(0.03, y, f"{pr[0]} {pr[1]}", va="center", fontsize=7, color="white" if d and o else "black")
        ax.set_yticks([])
        ax.set_xticks([])
        ax.set_ylim(len(pairs) - 0.5 if pairs else 0.5, -0.5)
        ax.set_title(f"{name}: {len(dec & obs)} used, {len(dec - obs)} declared only, {len(obs - dec)} undeclared, "
                     f"{len(lane)} break-glass only", fontsize=8)
    fig.suptitle("Declared vs observed scope (green: declared and used; amber: declared, never used; "
                 "red: used, not declared; light blue: used only under a break-glass lane)",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_over_blocks(production: pa.Table, rep: Replay, start: dt.datetime, path: Path) -> Path:
    t = ints(production["t_ns"])
    agent_c, agent_v = codes(production["agent"])
    hours = int(t.max() // 3_600_000_000_000) + 1 if len(t) else 1
    fig, ax = plt.subplots(figsize=(10, 3.2))
    bottom = np.zeros(hours)
    palette = ["#1f4e79", "#e69f00", "#009e73", "#cc79a7", "#56b4e9"]
    for k, name in enumerate(agent_v):
        rows = rep.over_block_rows[agent_c[rep.over_block_rows] == k]
        if len(rows) == 0:
            continue
        h = np.bincount(t[rows] // 3_600_000_000_000, minlength=hours)
        ax.bar(np.arange(hours), h, bottom=bottom, width=1.0, color=palette[k % len(palette)], label=name, align="edge")
        bottom += h
    if len(rep.collateral_rows):
        h = np.bincount(t[rep.collateral_rows] // 3_600_000_000_000, minlength=hours)
        ax.bar(np.arange(hours), h, bottom=bottom, width=1.0, color="#bbbbbb", label="collateral (quarantine after a correct denial)",
               align="edge")
    for a in rep.summary["attacks_caught"]:
        ax.axvline(a["first_at_ns"] / 3.6e12, color=BAD, lw=0.8, ls=":")
    for d in range(0, hours, 24):
        ax.axvline(d, color="#dddddd", lw=0.6)
    tod = start.hour + start.minute / 60
    ax.set_xlim(0, hours)
    ax.set_xlabel(f"hours since the start of the run (starts {start:%A %H:%M}; {tod:g} h into the day)")
    ax.set_ylabel("legitimate requests denied per hour")
    ax.set_title("Over-blocks over the production run (dotted red: injected attacks)")
    if bottom.any() or len(rep.collateral_rows):
        ax.legend(fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no over-blocks: no legitimate request was denied", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    return save_figure(fig, path)
