"""The pruning-at-initialization figure (experiments/pruning_at_init.py): mean final
test accuracy against the % of weights remaining, one line per method (IMP, Fisher and
random by level; the one-shot strategies by run), the shuffle ablation (`randomly_prune
--random_mask_scope=layerwise`) dotted in the same colour, one figure per model."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from open_lth.experiments.analysis import plots

ONE_SHOT = ("magnitude_at_init", "snip", "grasp", "synflow", "gem_miner")
COLORS = {
    "IMP (reset)": "C0",
    "IMP (rewind)": "C9",
    "fisher": "C1",
    "random": "0.45",
    "magnitude_at_init": "C4",
    "snip": "C3",
    "grasp": "C5",
    "synflow": "C6",
    "gem_miner": "C2",
}
METRIC = "final_test_accuracy"


def _method(row: pd.Series) -> str | None:
    strategy, mode = row.get("strategy"), row.get("start_mode")
    if strategy in ONE_SHOT:
        return strategy
    if mode not in ("reset", "rewind"):
        return None
    if strategy == "magnitude":
        return f"IMP ({mode})"
    return strategy if mode == "reset" else f"{strategy} ({mode})"


def frame(runs_df: pd.DataFrame) -> pd.DataFrame:
    """One row per finished training: model, method, shuffled, remaining_pct, accuracy.
    The dense level 0 is drawn once, as IMP (reset)'s first point."""
    df = runs_df[(runs_df["status"] == "done") & runs_df[METRIC].notna()].copy()
    if df.empty or "strategy" not in df:
        return pd.DataFrame(columns=["model", "method", "shuffled", "remaining_pct", METRIC])
    df["method"] = df.apply(_method, axis=1)
    scope = df.get("branch.random_mask_scope", pd.Series(None, index=df.index))
    main = (df["kind"] == "lottery") & (
        (df["level"] > 0) | ((df["level"] == 0) & (df["method"] == "IMP (reset)"))
    )
    shuffle = (df["kind"] == "branch") & (df["branch"] == "randomly_prune") & (scope == "layerwise")
    df = df[(main | shuffle) & df["method"].notna()]
    out = pd.DataFrame(
        {
            "model": df["model.model_name"].astype(str) + " " + df["training.training_steps"],
            "method": df["method"],
            "shuffled": shuffle[df.index],
            # 3 significant digits: IMP's per-level rounding and a one-shot target at
            # the same density differ by a few weights (6.2498% against 6.2502%).
            "remaining_pct": df["remaining_pct"].map(lambda v: float(f"{v:.3g}")),
            METRIC: df[METRIC],
        }
    )
    return out.reset_index(drop=True)


def has_runs(runs_df: pd.DataFrame) -> bool:
    """Whether a results root holds one-shot runs at initialization."""
    return "strategy" in runs_df and runs_df["strategy"].isin(ONE_SHOT[:-1]).any()


def accuracy_vs_density(data: pd.DataFrame, title: str) -> Figure:
    """One model's figure from `frame(...)` rows."""
    if data.empty:
        raise ValueError("no finished run of pruning at initialization")
    fig = plots.new_figure(width=7.4, height=4.8)
    ax = fig.add_subplot()
    for (method, shuffled), g in data.groupby(["method", "shuffled"], sort=True):
        stats = g.groupby("remaining_pct")[METRIC].agg(["mean", "std"]).sort_index()
        style = {"color": COLORS.get(method, "k"), "linestyle": ":" if shuffled else "-"}
        label = f"{method}, shuffled" if shuffled else method
        plots.band(ax, stats.index, stats["mean"], stats["std"], label, **style)
    plots._percent_axis(ax, data["remaining_pct"])
    ax.set_ylabel("test accuracy")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2)
    ax.set_title(title, fontsize="medium")
    return fig


def table(data: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy (%) by method and % remaining, for the index."""
    shown = data.assign(
        method=data["method"].where(~data["shuffled"], data["method"] + ", shuffled")
    )
    return (100 * shown.pivot_table(index="method", columns="remaining_pct", values=METRIC)).round(
        2
    )
