"""The drawing and writing behind `main.py report` (see experiments/analysis/report.py)."""

from __future__ import annotations

import argparse
import datetime
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from open_lth.experiments.analysis import load, plots, plots_at_init


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "runs"


class Report:
    """Draws and writes; `sections` collects the index's markdown per setting."""

    def __init__(
        self, root: Path, out: Path, runs: pd.DataFrame, options: argparse.Namespace
    ) -> None:
        self.root = root
        self.out = out
        self.runs = runs
        self.options = options
        self.metrics = load.metrics(root, runs)
        self.sparsity = load.sparsity(root, runs)
        self.curves = load.curves(root, runs)
        self.barriers = load.barriers(root, runs)
        self.figure_count = 0
        self.skipped: list[str] = []

    def say(self, text: str) -> None:
        if not getattr(self.options, "quiet", False):
            print(text)

    def write(self) -> None:
        lines = [f"# Report of `{self.root}`", ""]
        now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        done = int((self.runs["status"] == load.DONE).sum())
        lines.append(
            f"Written {now}. {len(self.runs)} stage folders: {done} done, "
            f"{len(self.runs) - done} running or crashed."
        )
        lines.append("")
        self.runs.to_csv(self.out / "runs.csv", index=False)
        settings = self.runs.loc[self.runs["kind"] != "train", "setting"].dropna().unique()
        for setting in settings:
            lines += self.setting_section(str(setting))
        lines += self.at_init_section()
        lines += self.train_section()
        lines += self.unfinished_section()
        if self.skipped:
            lines += ["## Skipped", ""] + [f"- {s}" for s in self.skipped] + [""]
        (self.out / "index.md").write_text("\n".join(lines))

    # ------------------------------------------------------------------ one setting

    def setting_section(self, setting: str) -> list[str]:
        folder = slug(setting)
        runs = self.runs[self.runs["setting"] == setting]
        lottery = runs[runs["kind"] == "lottery"]
        metrics = self.metrics[self.metrics["setting"] == setting]
        sparsity = self.sparsity[self.sparsity["setting"] == setting]
        curves = self.curves[self.curves["setting"] == setting]
        barriers = self.barriers[self.barriers["setting"] == setting]
        lines = [f"## {setting}", ""]
        n = lottery.drop_duplicates("run")
        lines.append(
            f"{len(n)} lottery runs ({', '.join(plots.run_labels(n).values()) if len(n) else '-'})"
            f", replicates {sorted(lottery['replicate'].unique().tolist())}."
        )
        lines.append("")
        self.say(f"{setting}:")

        def figure(name: str, title: str, draw: Callable) -> None:
            try:
                fig = draw()
            except Exception as e:  # one figure's gap must not stop the rest
                self.skip(setting, title, e)
                return
            plots.save(fig, self.out / folder, name)
            self.figure_count += 1
            self.say(f"  {folder}/{name}.png")
            lines.extend(
                [
                    f"### {title}",
                    "",
                    f"![{title}]({folder}/{name}.png)",
                    "",
                    f"[PDF]({folder}/{name}.pdf)",
                    "",
                ]
            )

        level = self.options.histogram_level
        figure(
            f"fig1_pruned_weights_level{level}",
            f"Figure 1: |w| of the weights pruned at level {level}",
            lambda: plots.pruned_weights_histogram(one_start(load.pruned_weights(lottery, level))),
        )
        figure(
            "fig2_accuracy_vs_sparsity",
            "Figure 2: test accuracy vs % of weights remaining",
            lambda: plots.accuracy_vs_sparsity(lottery),
        )
        starts = lottery.drop_duplicates("start")
        starts = sorted(starts["start"].dropna(), key=lambda s: plots.order_key("", *_mode(s)))
        for start in starts or ["reset"]:
            figure(
                f"fig3_test_error_vs_iteration_{slug(start)}",
                f"Figure 3: test error while training ({start})",
                lambda start=start: plots.error_vs_iteration(
                    metrics, self.options.percents, start=start
                ),
            )
        figure(
            "fig4_supermask_vs_sparsity",
            "Figure 4: supermask accuracy (the masked network before training; with "
            "BatchNorm also with re-estimated statistics; rewound runs: the step-k weights, "
            "not untrained) vs % of weights remaining",
            lambda: plots.supermask_vs_sparsity(lottery),
        )
        lines += self.tables(setting, folder, lottery, sparsity, barriers)
        figure(
            "fig6_interpolation",
            "Figure 6: error along the linear path between the two copies (k: the level's start)",
            lambda: plots.interpolation_plot(self.own_start(curves)),
        )
        figure(
            "fig7_instability_vs_k",
            "Figure 7: instability vs rewinding step k",
            lambda: plots.instability_vs_k(barriers),
        )
        return lines

    def tables(self, setting, folder, lottery, sparsity, barriers) -> list[str]:  # noqa: ANN001
        lines = []
        out = self.out / folder
        out.mkdir(parents=True, exist_ok=True)
        try:
            acc = plots.accuracy_table(lottery)
            acc.to_csv(out / "accuracy_vs_sparsity.csv")
            text = plots.frame_markdown(acc)
            (out / "accuracy_vs_sparsity.md").write_text(text + "\n")
            lines += ["### Mean final test accuracy by % of weights remaining", "", text, ""]
        except Exception as e:
            self.skip(setting, "accuracy table", e)
        try:
            if sparsity.empty or sparsity["level"].max() < 1:
                raise ValueError("no pruned level yet")
            table = plots.layerwise_sparsity_table(
                sparsity, self.options.table_level, self.options.table_percent
            )
            table.to_csv(out / "table2_layerwise_sparsity.csv")
            md = plots.table_markdown(table)
            (out / "table2_layerwise_sparsity.md").write_text(md + "\n")
            (out / "table2_layerwise_sparsity.tex").write_text(plots.table_latex(table) + "\n")
            a = table.attrs
            lines += [
                f"### Table 2: % of weights remaining per layer at level {a['level']} "
                f"({a['remaining_pct']:.3g}% overall; mean ± std over the n replicates)",
                "",
                md,
                "",
                f"[LaTeX]({folder}/table2_layerwise_sparsity.tex)",
                "",
            ]
            self.say(f"  {folder}/table2_layerwise_sparsity.md")
        except Exception as e:
            self.skip(setting, "Table 2 (layer-wise sparsity)", e)
        if not barriers.empty:
            columns = ["run", "replicate", "level", "strategy", "start", "remaining_pct"]
            columns += ["start_iteration", "train_instability", "test_instability", "status"]
            table = barriers[columns].sort_values(
                ["run", "level", "start_iteration", "replicate"], ignore_index=True
            )
            table.to_csv(out / "instability.csv", index=False)
            shown = table.drop(columns=["strategy", "start"])
            shown.insert(0, "pruning", table["run"].map(plots.run_labels(table)))
            shown = shown.drop(columns="run").set_index("pruning")
            shown = shown.rename(columns={"remaining_pct": "% remaining", "start_iteration": "k"})
            lines += ["### Instability (error barriers)", "", plots.frame_markdown(shown), ""]
        return lines

    def own_start(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The branches whose copies start where their level starts (no
        --branch_rewinding_steps), as in the study's Figure 9; other k go to Figure 7."""
        column = "branch.branch_rewinding_steps"
        if frame.empty or column not in self.runs:
            return frame
        default = self.runs.loc[self.runs[column].isna(), "path"]
        return frame[frame["path"].isin(set(default))]

    def skip(self, setting: str, what: str, error: Exception) -> None:
        reason = str(error) or type(error).__name__
        note = f"{setting}: {what}: {reason}"
        self.skipped.append(note)
        print(f"note: skipped {note}")

    # ------------------------------------------------------------------ other sections

    def at_init_section(self) -> list[str]:
        """experiments/pruning_at_init.py: accuracy against density per method and model."""
        if not plots_at_init.has_runs(self.runs):
            return []
        lines = ["## Pruning at initialization", ""]
        data = plots_at_init.frame(self.runs)
        for model, part in data.groupby("model"):
            name = f"fig_pruning_at_init_{slug(model)}"
            try:
                fig = plots_at_init.accuracy_vs_density(part, model)
            except Exception as e:
                self.skip(model, "pruning at initialization", e)
                continue
            plots.save(fig, self.out / "pruning_at_init", name)
            self.figure_count += 1
            self.say(f"  pruning_at_init/{name}.png")
            text = plots.frame_markdown(plots_at_init.table(part), ".2f")
            lines += [f"### {model}: test accuracy vs % of weights remaining", ""]
            lines += [f"![{model}](pruning_at_init/{name}.png)", "", text, ""]
        return lines

    def train_section(self) -> list[str]:
        train = self.runs[self.runs["kind"] == "train"]
        if train.empty:
            return []
        columns = ["setting", "replicate", "status", "end_iteration", "final_test_accuracy"]
        shown = train.set_index("run")[columns]
        return ["## Train runs", "", plots.frame_markdown(shown), ""]

    def unfinished_section(self) -> list[str]:
        todo = self.runs[self.runs["status"] != load.DONE]
        if todo.empty:
            return []
        last = self.metrics.groupby("path")["iteration"].max()
        shown = todo.set_index("run")[["replicate", "level", "branch", "has_checkpoint"]].copy()
        shown["last_iteration"] = todo["path"].map(last).to_numpy()
        shown["path"] = todo["path"].to_numpy()
        return ["## Running or crashed", "", plots.frame_markdown(shown, ".0f"), ""]


def _mode(start: str) -> tuple[str, str]:
    return start.split()[0], start


def one_start(weights: pd.DataFrame) -> pd.DataFrame:
    """Figure 1 for one start mode (reset if there): the pruned weights come from the
    trained weights, which at level 1 are the same dense run for every start mode."""
    if weights.empty:
        return weights
    starts = sorted(
        weights["start"].astype(str).unique(), key=lambda s: plots.order_key("", *_mode(s))
    )
    return weights[weights["start"].astype(str) == starts[0]]
