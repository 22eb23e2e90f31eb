"""The study's figures and tables from the DataFrames of `experiments.analysis.load`.

Each figure is one function that takes DataFrames and returns a matplotlib Figure,
drawn on an Agg canvas (no display, no pyplot state); `save` writes it as PNG and
PDF. Where a point has several replicates the line is their mean and the band the
mean ± one standard deviation.

    pruned_weights_histogram(load.pruned_weights(...))   Figure 1: |w| of what was pruned
    accuracy_vs_sparsity(runs)                           Figure 2/5: accuracy vs % remaining
    error_vs_iteration(metrics)                          Figure 3/6: test error while training
    supermask_vs_sparsity(runs)                          Figure 4/7: masked accuracy before training
    layerwise_sparsity_table(sparsity) + table_markdown / table_latex   Table 2
    interpolation_plot(curves)                           Figure 9/10: error along the path
    instability_vs_k(barriers)                           instability vs rewinding step k
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

STRATEGY_COLORS = {"magnitude": "C0", "fisher": "C1", "random": "0.45", "gem_miner": "C2"}
STRATEGY_ORDER = ["magnitude", "fisher", "gem_miner", "random"]
START_STYLES = {"reset": "-", "rewind": "--", "reinit": ":"}
START_ORDER = ["reset", "rewind", "reinit"]
REMAINING = "% of weights remaining"
CHANCE = {"mnist": 0.1, "cifar10": 0.1}
# The least range of accuracy (a fraction) that the accuracy-against-sparsity figure
# shows: 10 points.
MIN_ACCURACY_SPAN = 0.10


# ----------------------------------------------------------------------------- helpers


def new_figure(ncols: int = 1, width: float = 6.4, height: float = 4.4) -> Figure:
    fig = Figure(figsize=(width * ncols if ncols > 1 else width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(
    fig: Figure, out_dir: str | Path, name: str, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Write `<out_dir>/<name>.png` and `.pdf`; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out / f"{name}.{fmt}"
        fig.savefig(path, dpi=150 if fmt == "png" else None)
        paths.append(path)
    return paths


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (e.g. for IPython.display.Image)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def strategy_color(strategy: str) -> str:
    if strategy in STRATEGY_COLORS:
        return STRATEGY_COLORS[strategy]
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    return cycle[(3 + sum(map(ord, str(strategy)))) % len(cycle)]


def order_key(strategy: object, start_mode: object, start: object = "") -> tuple:
    s = STRATEGY_ORDER.index(strategy) if strategy in STRATEGY_ORDER else len(STRATEGY_ORDER)
    m = START_ORDER.index(start_mode) if start_mode in START_ORDER else len(START_ORDER)
    return (s, str(strategy), m, str(start))


def run_labels(frame: pd.DataFrame) -> dict[str, str]:
    """run -> `strategy (start)`, made unique with the run's hash where two share it."""
    first = frame.drop_duplicates("run").set_index("run")
    labels = {run: f"{row['strategy']} ({row['start']})" for run, row in first.iterrows()}
    counts = pd.Series(list(labels.values()), dtype=object).value_counts()
    for run, label in labels.items():
        if counts.get(label, 0) > 1:
            labels[run] = f"{label} {run.split('_')[-1][:6]}"
    return labels


def ordered_runs(frame: pd.DataFrame) -> list[str]:
    first = frame.drop_duplicates("run")
    keyed = [(order_key(r.strategy, r.start_mode, r.start), r.run) for r in first.itertuples()]
    return [run for _, run in sorted(keyed)]


def band(ax, x, mean, std, label: str | None = None, **style) -> None:  # noqa: ANN001
    """A line with markers and, where std is known, a mean ± std band."""
    x, mean, std = (np.asarray(v, dtype=float) for v in (x, mean, std))
    (line,) = ax.plot(x, mean, marker=style.pop("marker", "o"), ms=3, label=label, **style)
    if np.isfinite(std).any() and np.nanmax(np.nan_to_num(std)) > 0:
        s = np.nan_to_num(std)
        ax.fill_between(x, mean - s, mean + s, color=line.get_color(), alpha=0.18, lw=0)


def _percent_axis(ax, percents: Iterable[float]) -> None:  # noqa: ANN001
    """Log x axis of % remaining, reversed (100% on the left), ticks at the levels."""
    values = sorted({round(float(p), 6) for p in percents if np.isfinite(p) and p > 0})
    ax.set_xscale("log")
    if not values:
        return
    ax.set_xlim(values[-1] * 1.15, values[0] / 1.15)
    ticks = values[::-1]
    if len(ticks) > 9:
        picks = np.unique(np.linspace(0, len(ticks) - 1, 9).round().astype(int))
        ticks = [ticks[i] for i in picks]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.set_xlabel(REMAINING)


def _title(frame: pd.DataFrame) -> str:
    settings = [s for s in frame["setting"].dropna().unique()] if "setting" in frame else []
    return "; ".join(map(str, settings))


def _levels_for(percent_by_level: pd.Series, percents: Sequence[float] | None, most: int) -> list:
    """The levels nearest (in log) to `percents`, or `most` spread over all levels."""
    levels = list(percent_by_level.index)
    if not levels:
        return []
    if percents:
        logs = np.log(percent_by_level.clip(lower=1e-9).to_numpy())
        picks = [levels[int(np.argmin(np.abs(logs - np.log(p))))] for p in percents]
        return sorted(set(picks), key=levels.index)
    if len(levels) <= most:
        return levels
    return [levels[i] for i in np.unique(np.linspace(0, len(levels) - 1, most).round().astype(int))]


# ----------------------------------------------------------------------------- figures


def accuracy_vs_sparsity(
    runs_df: pd.DataFrame,
    metric: str = "final_test_accuracy",
    ylabel: str = "test accuracy",
    title: str | None = None,
) -> Figure:
    """`metric` of each finished lottery level against the % of weights remaining (log,
    reversed), one line per strategy and start mode (random in grey)."""
    df = _finished(runs_df, metric)
    if df.empty:
        raise ValueError(f"no finished lottery level has {metric}")
    fig = new_figure()
    ax = fig.add_subplot()
    _draw(ax, df, metric)
    _percent_axis(ax, df["remaining_pct"])
    _accuracy_span(ax)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title if title is not None else _title(df), fontsize="medium")
    return fig


def _accuracy_span(ax) -> None:  # noqa: ANN001
    """Widen the y axis to at least MIN_ACCURACY_SPAN below its top: matplotlib zooms to
    the data, so that a 0.3-point dip from the dense accuracy fills the figure and looks
    like a cliff. The top stays where autoscaling put it, just above the best point
    (the dense accuracy, drawn at 100%, is always within)."""
    low, high = ax.get_ylim()
    if high - low < MIN_ACCURACY_SPAN:
        low = max(0.0, high - MIN_ACCURACY_SPAN)
        ax.set_ylim(low, max(high, low + MIN_ACCURACY_SPAN))


def _finished(runs_df: pd.DataFrame, metric: str) -> pd.DataFrame:
    df = runs_df[(runs_df["kind"] == "lottery") & (runs_df["status"] == "done")]
    return df[df[metric].notna()] if metric in df else df.iloc[0:0]


def _draw(ax, df: pd.DataFrame, metric: str, suffix: str = "", **extra) -> None:  # noqa: ANN001
    labels = run_labels(df)
    for run in ordered_runs(df):
        g = df[df["run"] == run]
        stats = g.groupby("level").agg(
            x=("remaining_pct", "mean"), y=(metric, "mean"), s=(metric, "std")
        )
        first = g.iloc[0]
        style = {"color": strategy_color(first["strategy"])}
        style["linestyle"] = START_STYLES.get(first["start_mode"], "-.")
        band(ax, stats["x"], stats["y"], stats["s"], labels[run] + suffix, **style | extra)


SUPERMASK_BN = "supermask_test_accuracy_bn_recomputed"


def supermask_vs_sparsity(runs_df: pd.DataFrame, title: str | None = None) -> Figure:
    """Accuracy of the masked network before training at each level (supermasks):
    with the BatchNorm statistics it holds (filled markers) and, for models with
    BatchNorm, re-estimated for the masked network (hollow squares). At the levels past
    0 of a rewound run the weights are the dense run's step-k weights, not untrained
    ones, and the legend says so."""
    metric = "supermask_test_accuracy"
    df = _finished(runs_df, metric)
    if df.empty:
        raise ValueError(f"no finished lottery level has {metric}")
    df = df.copy()
    rewound = df["start_mode"] == "rewind"
    df.loc[rewound, "start"] = df.loc[rewound, "start"] + ": step-k weights"
    fig = new_figure()
    ax = fig.add_subplot()
    _draw(ax, df, metric)
    bn = _finished(df, SUPERMASK_BN)
    if not bn.empty:
        _draw(ax, bn, SUPERMASK_BN, ", BN re-estimated", marker="s", mfc="none", alpha=0.8)
    _percent_axis(ax, df["remaining_pct"])
    ax.set_ylabel("supermask test accuracy (masked, before training)")
    ax.grid(True, which="major", alpha=0.3)
    datasets = runs_df.get("dataset.dataset_name", pd.Series(dtype=object)).dropna().unique()
    chance = {CHANCE[d] for d in datasets if d in CHANCE}
    if len(chance) == 1:
        ax.axhline(chance.pop(), color="k", lw=0.8, ls=":", label="chance")
    ax.legend(fontsize="small")
    ax.set_title(title if title is not None else _title(df), fontsize="medium")
    return fig


def error_vs_iteration(
    metrics_df: pd.DataFrame,
    percents: Sequence[float] | None = None,
    start: str | None = None,
    strategies: Sequence[str] | None = None,
    most: int = 6,
    skip_untrained: bool = True,
    title: str | None = None,
) -> Figure:
    """Test error while training, one panel per strategy, one line per chosen level
    (nearest to `percents`, else up to `most` spread over the levels), labelled with
    its % remaining; `start` picks the start mode (default: reset if there), and
    `strategies` the panels (default: all but random, whose errors would set the scale)."""
    df = metrics_df[(metrics_df["kind"] == "lottery") & (metrics_df["name"] == "test_accuracy")]
    if df.empty:
        raise ValueError("no test_accuracy rows of lottery levels")
    if start is None:
        present = df.drop_duplicates("start")
        start = sorted(present["start"], key=lambda s: order_key("", s.split()[0], s))[0]
    df = df[df["start"] == start]
    if skip_untrained:
        stage = df.groupby(["run", "replicate", "level"])["iteration"]
        df = df[(df["iteration"] > stage.transform("min")) | (stage.transform("nunique") == 1)]
    present = sorted(df["strategy"].dropna().unique(), key=lambda s: order_key(s, ""))
    if strategies is None:  # like the study: the pruning methods, not the random control
        strategies = [s for s in present if s != "random"] or present
    strategies = [s for s in strategies if s in present]
    if not strategies:
        raise ValueError(f"no lottery levels with start {start} for those strategies")
    fig = new_figure(ncols=len(strategies), width=5.2)
    axes = fig.subplots(1, len(strategies), sharey=True, squeeze=False)[0]
    cmap = matplotlib.colormaps["viridis"]
    for ax, strategy in zip(axes, strategies, strict=True):
        g = df[df["strategy"] == strategy]
        by_level = g.groupby("level")["remaining_pct"].mean().sort_index()
        chosen = _levels_for(by_level, percents, most)
        for i, level in enumerate(chosen):
            stats = g[g["level"] == level].groupby("iteration")["value"].agg(["mean", "std"])
            color = cmap(0.9 * i / max(1, len(chosen) - 1))
            label = f"{by_level[level]:.3g}%"
            band(ax, stats.index, 1 - stats["mean"], stats["std"], label, color=color, marker=".")
        ax.set_title(f"{strategy} ({start})", fontsize="medium")
        ax.set_xlabel("training iteration")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", title=REMAINING, title_fontsize="small")
    axes[0].set_ylabel("test error")
    fig.suptitle(title if title is not None else _title(df), fontsize="medium")
    return fig


def pruned_weights_histogram(
    weights_df: pd.DataFrame,
    bins: int = 60,
    log_y: bool = False,
    layer: str | None = None,
    title: str | None = None,
) -> Figure:
    """Histograms of |w| of the weights each strategy pruned at a level (from
    `load.pruned_weights`), over all the weights that were there, one panel per start."""
    df = weights_df if layer is None else weights_df[weights_df["layer"] == layer]
    if df.empty or not df["pruned"].any():
        raise ValueError("no pruned weights to draw")
    starts = sorted(df["start"].astype(str).unique(), key=lambda s: order_key("", s.split()[0], s))
    fig = new_figure(ncols=len(starts), width=5.6)
    axes = fig.subplots(1, len(starts), sharex=True, squeeze=False)[0]
    edges = np.linspace(0, float(df["magnitude"].max()) * 1.0001, bins + 1)
    level = int(df["level"].iloc[0])
    for ax, start in zip(axes, starts, strict=True):
        part = df[df["start"].astype(str) == start]
        runs = ordered_runs(part.astype({"run": str, "strategy": str, "start": str}))
        base = part[part["run"] == runs[0]]
        all_label = "all weights before pruning"
        if level > 1 and len(runs) > 1:
            all_label += f" ({base['strategy'].iloc[0]} run)"
        ax.hist(base["magnitude"], bins=edges, color="0.82", label=all_label)
        for run in runs:
            pruned = part[(part["run"] == run) & part["pruned"]]
            if pruned.empty:
                continue
            strategy = str(pruned["strategy"].iloc[0])
            biggest = pruned["magnitude"].max()
            ax.hist(
                pruned["magnitude"],
                bins=edges,
                histtype="step",
                lw=1.6,
                color=strategy_color(strategy),
                label=f"pruned by {strategy} (largest |w| {biggest:.3g})",
            )
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel(f"|w| at the end of level {level - 1}'s training")
        ax.set_title(f"weights pruned at level {level} ({start})", fontsize="medium")
        ax.legend(fontsize="small")
    axes[0].set_ylabel("number of weights")
    if title is not None or "setting" in df:
        fig.suptitle(title if title is not None else _title(df), fontsize="medium")
    return fig


def interpolation_plot(curves_df: pd.DataFrame, title: str | None = None) -> Figure:
    """Error along the linear path between the two copies (alpha 0 to 1), train and
    test panels, one line per branch (mean ± std over replicates)."""
    if curves_df.empty:
        raise ValueError("no interpolation curves")
    splits = [s for s in ("train", "test") if s in set(curves_df["split"])]
    splits += sorted(set(curves_df["split"]) - set(splits))
    fig = new_figure(ncols=len(splits), width=5.2)
    axes = fig.subplots(1, len(splits), sharey=True, squeeze=False)[0]
    keys = ["run", "level", "branch_dir"]
    lines = curves_df.drop_duplicates(keys)
    lines = sorted(
        lines.itertuples(),
        key=lambda r: (order_key(r.strategy, r.start_mode), r.level, r.start_iteration),
    )
    for ax, split in zip(axes, splits, strict=True):
        for i, line in enumerate(lines):
            g = curves_df[
                (curves_df["run"] == line.run)
                & (curves_df["level"] == line.level)
                & (curves_df["branch_dir"] == line.branch_dir)
                & (curves_df["split"] == split)
            ]
            if g.empty:
                continue
            stats = g.groupby("alpha")["error"].agg(["mean", "std"])
            k = g["start_iteration"].iloc[0]
            label = f"{line.strategy} ({line.start}), {line.remaining_pct:.3g}%"
            label += f", k={int(k)}" if pd.notna(k) else ""
            label += "" if (g["status"] == "done").all() else " (running)"
            band(ax, stats.index, stats["mean"], stats["std"], label, color=f"C{i % 10}")
        _label_panel(ax, "interpolation α", f"{split} error along the linear path")
    return _label_figure(fig, axes[0], "error", title if title is not None else _title(curves_df))


def instability_vs_k(barriers_df: pd.DataFrame, title: str | None = None) -> Figure:
    """Instability (error barrier) against the step k the copies started from, one
    line per lottery run and level, train and test panels."""
    df = barriers_df[barriers_df["start_iteration"].notna()]
    if df.empty or df.groupby(["run", "level"])["start_iteration"].nunique().max() < 2:
        raise ValueError("instability vs k needs branches at two or more steps k of one level")
    fig = new_figure(ncols=2, width=5.2)
    axes = fig.subplots(1, 2, sharey=True)
    ks = np.sort(df["start_iteration"].unique())
    positive = ks[ks > 0]
    for ax, split in zip(axes, ("train", "test"), strict=True):
        column = f"{split}_instability"
        groups = df.groupby(["run", "level"], sort=False)
        for i, ((_, level), g) in enumerate(groups):
            if g["start_iteration"].nunique() < 2:
                continue
            stats = g.groupby("start_iteration")[column].agg(["mean", "std"])
            first = g.iloc[0]
            label = f"{first['strategy']} ({first['start']}), level {level}"
            label += f" ({first['remaining_pct']:.3g}%)"
            band(ax, stats.index, stats["mean"], stats["std"], label, color=f"C{i % 10}")
        if len(positive) >= 2 and positive[-1] / positive[0] >= 10:
            if ks[0] == 0:
                ax.set_xscale("symlog", linthresh=float(positive[0]))
            else:
                ax.set_xscale("log")
        _label_panel(ax, "rewinding step k (iterations)", f"{split} instability")
    ylabel = "instability (error barrier)"
    return _label_figure(fig, axes[0], ylabel, title if title is not None else _title(df))


def _label_panel(ax: Axes, xlabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def _label_figure(fig: Figure, first: Axes, ylabel: str, title: str) -> Figure:
    first.set_ylabel(ylabel)
    fig.suptitle(title, fontsize="medium")
    return fig


# ----------------------------------------------------------------------------- tables


def deepest_common_level(frame: pd.DataFrame) -> int | None:
    """The deepest level every run in `frame` has reached."""
    if frame.empty:
        return None
    return int(frame.groupby("run")["level"].max().min())


def layerwise_sparsity_table(
    sparsity_df: pd.DataFrame, level: int | None = None, percent: float | None = None
) -> pd.DataFrame:
    """% of weights remaining per layer at one level (the study's Table 2): rows are
    `strategy (start)`, columns (layer, mean|std) over replicates, the total last.
    The level: `level`, else the one nearest `percent`, else the deepest every run has.
    attrs: level, remaining_pct, replicates (the most of any row), n (per row)."""
    df = sparsity_df
    if df.empty:
        raise ValueError("no sparsity reports")
    if level is None and percent is not None:
        by_level = df.groupby("level")["level_density"].mean().sort_index() * 100
        level = _levels_for(by_level, [percent], 1)[0]
    if level is None:
        level = deepest_common_level(df)
    df = df[df["level"] == level]
    if df.empty:
        raise ValueError(f"no sparsity reports at level {level}")
    labels = run_labels(df)
    order = df.drop_duplicates("layer").sort_values(["is_total", "layer_index"])["layer"].tolist()
    rows = {}
    for run in ordered_runs(df):
        g = df[df["run"] == run]
        stats = g.groupby("layer")["remaining_pct"].agg(["mean", "std"])
        rows[labels[run]] = {(layer, s): stats.loc[layer, s] for layer in order for s in stats}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["layer", "stat"])
    table = table.reindex(columns=pd.MultiIndex.from_product([order, ["mean", "std"]]))
    table.index.name = "pruning"
    table.attrs["level"] = int(level)
    table.attrs["remaining_pct"] = float(df["level_density"].mean() * 100)
    table.attrs["replicates"] = int(df["replicate"].nunique())
    counts = df.groupby("run")["replicate"].nunique()
    table.attrs["n"] = {labels[run]: int(counts[run]) for run in ordered_runs(df)}
    return table


def _cells(table: pd.DataFrame, digits: int, pm: str, pct: str) -> tuple[list[str], list[list]]:
    """Header names and rows of cells; the last cell of a row is its replicate count."""
    layers = list(dict.fromkeys(table.columns.get_level_values(0)))
    counts = table.attrs.get("n", {})
    rows = []
    for label, row in table.iterrows():
        cells = []
        for layer in layers:
            mean, std = row[(layer, "mean")], row[(layer, "std")]
            spread = "" if pd.isna(std) else f"({pm} {std:.{digits}f})"
            cells.append(f"{mean:.{digits}f}{spread}{pct}")
        rows.append([str(label), *cells, str(counts.get(label, ""))])
    return layers, rows


def table_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """The layer-wise table as markdown, cells like `0.184(± 0.003)%`."""
    layers, rows = _cells(table, digits, "±", "%")
    head = ["pruning", *(_layer_title(i, n) for i, n in enumerate(layers)), "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def table_latex(table: pd.DataFrame, digits: int = 3) -> str:
    """The layer-wise table as a LaTeX tabular (booktabs)."""
    layers, rows = _cells(table, digits, r"$\pm$", r"\%")
    head = ["", *(_latex_escape(_layer_title(i, n)) for i, n in enumerate(layers)), "$n$"]
    lines = [r"\begin{tabular}{l" + "c" * len(layers) + "r}", r"\toprule"]
    lines.append(" & ".join(head) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join([_latex_escape(r[0]), *r[1:]]) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def _layer_title(index: int, name: str) -> str:
    return "total" if name == "total" else f"Layer {index + 1} ({name})"


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&")):
        text = text.replace(a, b)
    return text


def accuracy_table(runs_df: pd.DataFrame, metric: str = "final_test_accuracy") -> pd.DataFrame:
    """Mean `metric` over replicates: rows `strategy (start)`, columns % remaining."""
    df = runs_df[(runs_df["kind"] == "lottery") & (runs_df["status"] == "done")]
    df = df[df[metric].notna()] if metric in df else df.iloc[0:0]
    if df.empty:
        raise ValueError(f"no finished lottery level has {metric}")
    labels = run_labels(df)
    percent = df.groupby("level")["remaining_pct"].mean()
    rows = {}
    for run in ordered_runs(df):
        means = df[df["run"] == run].groupby("level")[metric].mean()
        rows[labels[run]] = {round(percent[level], 3): v for level, v in means.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table = table[sorted(table.columns, reverse=True)]
    table.index.name = "pruning"
    table.columns.name = REMAINING
    return table


def frame_markdown(frame: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """Any flat DataFrame as a markdown table (no extra dependency)."""
    head = [
        str(frame.index.name or ""),
        *(f"{c:g}" if isinstance(c, float) else str(c) for c in frame.columns),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in frame.iterrows():
        cells = [
            "" if pd.isna(v) else (format(v, floatfmt) if isinstance(v, float) else str(v))
            for v in row
        ]
        lines.append("| " + " | ".join([str(label), *cells]) + " |")
    return "\n".join(lines)
