"""experiments/: the loaders, figures and tables on a generated results root, the sweep
library and the study scripts, the Colab platform and the notebook."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synthetic
import torch

from conftest import DATA, REPO
from open_lth.experiments.analysis import load, plots
from open_lth.experiments.jobs import sweep
from open_lth.foundations.errors import UserError

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> synthetic.Layout:
    return synthetic.make_results_root(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def frames(layout: synthetic.Layout) -> dict[str, pd.DataFrame]:
    runs = load.runs(layout.root)
    return {
        "runs": runs,
        "metrics": load.metrics(layout.root, runs),
        "sparsity": load.sparsity(layout.root, runs),
        "curves": load.curves(layout.root, runs),
        "barriers": load.barriers(layout.root, runs),
    }


# ----------------------------------------------------------------------------- loaders


def test_runs_one_row_per_stage_with_status_and_hparams(layout, frames) -> None:
    runs = frames["runs"]
    for column in [*load.IDS, "training.lr", "pruning.pruning_strategy", "lottery.reinitialize"]:
        assert column in runs.columns, column
    lottery = runs[runs["kind"] == "lottery"]
    assert len(lottery) == 4 * 2 * 4  # (strategy, start) x replicates x levels 0-3
    assert (runs["kind"] == "train").sum() == 1
    branches = runs[runs["kind"] == "branch"]
    assert sorted(branches["branch"].value_counts().items()) == [
        ("instability", 8),
        ("randomly_prune", 1),
    ]
    assert set(lottery["start_mode"]) == {"reset", "reinit"}
    assert set(lottery["strategy"]) == {"magnitude", "fisher", "random"}
    assert set(lottery["training.lr"]) == {0.0012}
    # densities from the sparsity reports: 0.8^level, to the rounding of each level
    by_level = lottery.groupby("level")["density"].mean()
    assert np.allclose(by_level.to_numpy(), 0.8 ** np.arange(4), atol=0.01)
    incomplete = runs[runs["status"] == load.INCOMPLETE]
    assert sorted(incomplete["path"]) == sorted(
        [str(layout.crashed), str(layout.instability_running)]
    )
    crashed = runs[runs["path"] == str(layout.crashed)].iloc[0]
    assert crashed["has_checkpoint"] and np.isnan(crashed["final_test_accuracy"])
    done = runs[(runs["kind"] == "lottery") & (runs["status"] == load.DONE)]
    assert done["final_test_accuracy"].notna().all()
    control = runs[runs["branch"] == "randomly_prune"].iloc[0]
    assert control["path"] == str(layout.control) and control["status"] == load.DONE
    assert control["strategy"] == "magnitude" and control["level"] == 2
    assert runs.loc[runs["kind"] == "train", "density"].tolist() == [1.0]


def test_runs_of_the_lottery_share_one_setting(frames) -> None:
    runs = frames["runs"]
    assert runs["setting"].nunique() == 1
    assert runs["setting"].iloc[0] == "mnist_lenet_24_12 mnist 300it"


def test_metrics_keep_the_rows_of_a_crashed_run(layout, frames) -> None:
    metrics = frames["metrics"]
    assert {"iteration", "name", "value", "copy", *load.IDS} <= set(metrics.columns)
    crashed = metrics[metrics["path"] == str(layout.crashed)]
    assert set(crashed["status"]) == {load.INCOMPLETE}
    last = crashed[crashed["iteration"] == 300]
    # the rows of iteration 300 written before the kill are kept; the cut row is not
    assert sorted(last["name"]) == ["train_accuracy", "train_loss"]
    assert crashed[crashed["name"] == "test_accuracy"]["iteration"].tolist() == [0, 100, 200]
    copies = metrics[metrics["kind"] == "branch"]["copy"].dropna()
    assert set(copies) == {1, 2}
    first = metrics[(metrics["kind"] == "lottery") & (metrics["iteration"] == 0)]
    assert "supermask_test_accuracy" in set(first["name"])


def test_read_metrics_drops_a_cut_line_and_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("iteration,name,value\n0,test_accuracy,0.1\nxx,bad,row\n1,test_loss\n2,test_")
    frame = load.read_metrics(path)
    assert frame.to_dict("records") == [{"iteration": 0, "name": "test_accuracy", "value": 0.1}]
    assert load.read_metrics(tmp_path / "missing.csv").empty


def test_sparsity_equals_the_masks(layout, frames) -> None:
    from_reports = frames["sparsity"]
    from_masks = load.sparsity(layout.root, frames["runs"], from_masks=True)
    for frame in (from_reports, from_masks):
        for (strategy, start), _ in layout.lotteries.items():
            for replicate in layout.replicates:
                for level in range(layout.levels + 1):
                    mask = torch.load(
                        layout.level(strategy, start, replicate, level) / "mask.pt",
                        weights_only=True,
                    )
                    rows = frame[
                        (frame["strategy"] == strategy)
                        & (frame["start"] == start)
                        & (frame["replicate"] == replicate)
                        & (frame["level"] == level)
                    ].set_index("layer")
                    for name, m in mask.items():
                        assert rows.loc[name, "kept"] == int(m.sum())
                        assert rows.loc[name, "total"] == m.numel()
                    kept = sum(int(m.sum()) for m in mask.values())
                    assert rows.loc["total", "kept"] == kept
    layers = from_reports.drop_duplicates("layer").sort_values("layer_index")["layer"].tolist()
    assert layers == [*synthetic.LAYERS, "total"]  # the model's order, not alphabetical


def test_curves_and_barriers(layout, frames) -> None:
    curves, barriers = frames["curves"], frames["barriers"]
    assert {"alpha", "split", "error", "loss", "start_iteration"} <= set(curves.columns)
    running = curves[curves["status"] == load.INCOMPLETE]
    assert len(running) == 14 and running["alpha"].max() < 1  # the partial curve is kept
    done = barriers[barriers["status"] == load.DONE]
    assert len(done) == 7 and set(done["source"]) == {"instability.json"}
    level0 = done[done["level"] == 0].groupby("start_iteration")["train_instability"].mean()
    assert level0.index.tolist() == [0, 100, 200] and level0.is_monotonic_decreasing
    partial = barriers[barriers["status"] == load.INCOMPLETE].iloc[0]
    assert partial["source"] == "curve.csv" and np.isnan(partial["train_instability"])
    assert partial["start_iteration"] == 0 or np.isnan(partial["start_iteration"])


def test_barrier_of_a_curve() -> None:
    curve = pd.DataFrame(
        {"alpha": [0.0, 0.5, 1.0], "split": "test", "error": [0.1, 0.5, 0.2], "loss": 0.0}
    )
    assert load.barrier(curve, "test") == pytest.approx(0.5 - 0.15)
    assert np.isnan(load.barrier(curve[curve["alpha"] < 1], "test"))


def test_pruned_weights_are_what_the_masks_removed(layout, frames) -> None:
    weights = load.pruned_weights(frames["runs"], level=1)
    assert set(weights["replicate"]) == {1}
    magnitude = weights[(weights["strategy"] == "magnitude") & (weights["start"] == "reset")]
    before = torch.load(layout.level("magnitude", "reset", 1, 0) / "mask.pt", weights_only=True)
    after = torch.load(layout.level("magnitude", "reset", 1, 1) / "mask.pt", weights_only=True)
    removed = sum(int((before[n] & ~after[n]).sum()) for n in before)
    assert int(magnitude["pruned"].sum()) == removed
    assert len(magnitude) == sum(int(m.sum()) for m in before.values())
    # magnitude pruning removes the smallest: every pruned |w| is below every kept one
    pruned = magnitude.loc[magnitude["pruned"], "magnitude"]
    kept = magnitude.loc[~magnitude["pruned"], "magnitude"]
    assert pruned.max() <= kept.min()


def test_missing_root_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load.runs(tmp_path / "nowhere")
    empty = load.runs(tmp_path)
    assert empty.empty and set(load.IDS) <= set(empty.columns)
    assert load.metrics(tmp_path).empty and load.curves(tmp_path).empty


# ----------------------------------------------------------------------------- figures


def check_png(fig, tmp_path: Path, name: str) -> None:
    png, pdf = plots.save(fig, tmp_path, name)
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 2_000


def has_band(ax) -> bool:
    return any(
        type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection") for c in ax.collections
    )


@pytest.mark.parametrize("strategies", [None, ["magnitude"]])
def test_accuracy_axis_spans_ten_points(frames, strategies: list[str] | None) -> None:
    """The synthetic runs lose 1 (magnitude) to 7 (random) points: the axis still spans
    10 points, with the dense accuracy inside, so that a small dip looks small."""
    runs = frames["runs"]
    if strategies:
        runs = runs[runs["strategy"].isin(strategies)]
    fig = plots.accuracy_vs_sparsity(runs)
    low, high = fig.axes[0].get_ylim()
    assert high - low >= 0.10 - 1e-9
    lottery = runs[(runs["kind"] == "lottery") & (runs["status"] == "done")]
    dense = lottery[lottery["level"] == 0]["final_test_accuracy"]
    assert low <= dense.min() and dense.max() <= high
    assert high - lottery["final_test_accuracy"].max() < 0.02  # the top hugs the best point


def test_accuracy_vs_sparsity(frames, tmp_path: Path) -> None:
    fig = plots.accuracy_vs_sparsity(frames["runs"])
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "% of weights remaining"
    left, right = ax.get_xlim()
    assert left > right  # reversed: 100% on the left
    assert ax.get_ylabel() == "test accuracy"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["magnitude (reset)", "magnitude (reinit)", "fisher (reset)", "random (reset)"]
    assert has_band(ax)  # two replicates: mean ± std
    check_png(fig, tmp_path, "accuracy")


def test_supermask_vs_sparsity(frames, tmp_path: Path) -> None:
    fig = plots.supermask_vs_sparsity(frames["runs"])
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and "supermask" in ax.get_ylabel()
    assert "chance" in [t.get_text() for t in ax.get_legend().get_texts()]
    check_png(fig, tmp_path, "supermask")


def test_error_vs_iteration(frames, tmp_path: Path) -> None:
    fig = plots.error_vs_iteration(frames["metrics"], percents=[100, 51.2])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["magnitude (reset)", "fisher (reset)"]
    ax = fig.axes[0]
    assert ax.get_xlabel() == "training iteration" and ax.get_ylabel() == "test error"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["100%", "51.3%"]
    check_png(fig, tmp_path, "error")
    reinit = plots.error_vs_iteration(frames["metrics"], start="reinit")
    assert [ax.get_title() for ax in reinit.axes] == ["magnitude (reinit)"]
    random = plots.error_vs_iteration(frames["metrics"], strategies=["random"])
    assert [ax.get_title() for ax in random.axes] == ["random (reset)"]


def test_pruned_weights_histogram(frames, tmp_path: Path) -> None:
    weights = load.pruned_weights(frames["runs"], level=1)
    fig = plots.pruned_weights_histogram(weights[weights["start"] == "reset"], log_y=True)
    ax = fig.axes[0]
    assert "|w|" in ax.get_xlabel() and ax.get_ylabel() == "number of weights"
    assert ax.get_yscale() == "log"
    labels = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "all weights" in labels and "pruned by fisher" in labels and "pruned by random" in labels
    check_png(fig, tmp_path, "histogram")


def test_interpolation_plot(frames, tmp_path: Path) -> None:
    fig = plots.interpolation_plot(frames["curves"])
    assert [ax.get_xlabel() for ax in fig.axes] == ["interpolation α"] * 2
    assert fig.axes[0].get_ylabel() == "error"
    assert "train" in fig.axes[0].get_title() and "test" in fig.axes[1].get_title()
    check_png(fig, tmp_path, "interpolation")


def test_instability_vs_k(frames, tmp_path: Path) -> None:
    fig = plots.instability_vs_k(frames["barriers"])
    ax = fig.axes[0]
    assert ax.get_xlabel() == "rewinding step k (iterations)"
    assert ax.get_ylabel() == "instability (error barrier)"
    assert has_band(ax)
    check_png(fig, tmp_path, "instability")


def test_figures_refuse_empty_input(frames) -> None:
    nothing = frames["runs"].iloc[0:0]
    with pytest.raises(ValueError, match="no finished lottery level"):
        plots.accuracy_vs_sparsity(nothing)
    with pytest.raises(ValueError, match="no interpolation curves"):
        plots.interpolation_plot(frames["curves"].iloc[0:0])
    with pytest.raises(ValueError, match="two or more steps k"):
        plots.instability_vs_k(frames["barriers"][frames["barriers"]["level"] == 2])


def test_layerwise_table_equals_the_mask_counts(layout, frames) -> None:
    table = plots.layerwise_sparsity_table(frames["sparsity"], level=3)
    assert table.attrs["level"] == 3
    for (strategy, start), _ in layout.lotteries.items():
        percents = {n: [] for n in synthetic.LAYERS}
        for replicate in layout.replicates:
            path = layout.level(strategy, start, replicate, 3) / "mask.pt"
            for n, m in torch.load(path, weights_only=True).items():
                percents[n].append(100 * m.sum().item() / m.numel())
        row = table.loc[f"{strategy} ({start})"]
        for n, values in percents.items():
            assert row[(n, "mean")] == pytest.approx(np.mean(values))
            assert row[(n, "std")] == pytest.approx(np.std(values, ddof=1))
    markdown = plots.table_markdown(table)
    assert "| pruning | Layer 1 (fc_layers.0.weight) |" in markdown
    mean, std = (
        table.loc["magnitude (reset)", ("fc.weight", "mean")],
        table.loc["magnitude (reset)", ("fc.weight", "std")],
    )
    assert f"{mean:.3f}(± {std:.3f})%" in markdown
    latex = plots.table_latex(table)
    assert latex.startswith(r"\begin{tabular}") and r"$\pm$" in latex and r"fc\_layers" in latex
    nearest = plots.layerwise_sparsity_table(frames["sparsity"], percent=60)
    assert nearest.attrs["level"] == 2  # 64% is the nearest to 60%


def test_accuracy_table(frames) -> None:
    table = plots.accuracy_table(frames["runs"])
    assert list(table.columns) == sorted(table.columns, reverse=True)
    assert table.columns[0] == 100
    runs = frames["runs"]
    expected = runs[
        (runs["strategy"] == "random") & (runs["level"] == 3) & (runs["kind"] == "lottery")
    ]["final_test_accuracy"].mean()
    assert table.loc["random (reset)"].iloc[-1] == pytest.approx(expected)


# ----------------------------------------------------------------------------- sweeps


def script(name: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "experiments" / name), *flags],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_quick_lenet_dry_run_lists_the_grid(tmp_path: Path) -> None:
    flags = ["--quick", f"--root={tmp_path}", f"--dataset_root={DATA}"]
    done = script("lenet_fisher_vs_magnitude.py", *flags, "--dry_run")
    assert done.returncode == 0, done.stderr
    commands = [line for line in done.stdout.splitlines() if "main.py lottery" in line]
    folders = [line for line in done.stdout.splitlines() if line.startswith("  to run ")]
    assert len(commands) == len(folders) == 12  # 3 strategies x reset/reinit x 2 replicates
    assert len({f.split()[-1] for f in folders}) == 12
    assert all(str(tmp_path) in f for f in folders)
    assert sum("--reinitialize" in c for c in commands) == 6
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_sweep_skips_done_runs_and_prints_commands(tmp_path: Path, capsys) -> None:
    from open_lth.experiments import lenet_fisher_vs_magnitude as lenet

    argv = ["--quick", f"--root={tmp_path}", f"--dataset_root={DATA}", "--replicates=1"]
    argv += ["--strategies=magnitude"]
    parser = argparse.ArgumentParser()
    sweep.add_args(parser)
    lenet.add_args(parser)
    args = parser.parse_args(argv)
    phases = lenet.build(args)
    assert len(phases[0]) == 2
    location, error = sweep.locate(phases[0][0])
    assert error is None and location.parent.parent == tmp_path
    for level in range(6):
        (location / f"level_{level}" / "main").mkdir(parents=True)
        (location / f"level_{level}" / "main" / "summary.json").write_text("{}")
    assert sweep.is_done(phases[0][0], location)
    assert not sweep.is_done(phases[0][1], sweep.locate(phases[0][1])[0])
    args.print_commands = True
    assert sweep.execute(phases, args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "--reinitialize" in out[0] and "main.py lottery" in out[0]


def test_sweep_runs_jobs_in_parallel_and_resumes(tmp_path: Path, capsys) -> None:
    base = ["train", "--default_hparams=mnist_lenet_300_100", f"--dataset_root={DATA}"]
    base += [f"--root={tmp_path}", "--subsample_fraction=0.02", "--training_steps=5it", "--quiet"]
    phases = [[[*base, "--replicate=1"], [*base, "--replicate=2"]]]
    args = argparse.Namespace(dry_run=False, print_commands=False, jobs=2, log_dir=None)
    args.root = str(tmp_path)
    assert sweep.execute(phases, args) == 0
    summaries = sorted(tmp_path.glob("train_*/replicate_*/main/summary.json"))
    assert len(summaries) == 2
    assert len(list((tmp_path / "sweep_logs").glob("*.log"))) == 2
    capsys.readouterr()
    args.dry_run = True
    assert sweep.execute(phases, args) == 0
    assert "2 runs, 2 done, 0 to run" in capsys.readouterr().out


def test_sweep_job_env_spreads_gpus() -> None:
    env = sweep.job_env(3, 4, ["0", "1"])
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert sweep.parse_levels("0,3-5") == [0, 3, 4, 5] and sweep.parse_levels("x") == []
    assert sweep.flag_value(["a", "--levels=3", "--levels", "4"], "--levels") == "4"


def test_study_scripts_build_their_grids(tmp_path: Path) -> None:
    from open_lth.experiments import instability
    from open_lth.experiments import resnet_fisher_vs_magnitude as resnet

    parser = argparse.ArgumentParser()
    sweep.add_args(parser)
    resnet.add_args(parser)
    args = parser.parse_args([f"--root={tmp_path}"])
    runs = resnet.build(args)[0]
    assert len(runs) == 4  # magnitude, fisher x reset, rewind 2000it
    assert all(
        "--training_steps=30000it" in r and "--pruning_layers_to_ignore=fc.weight" in r
        for r in runs
    )
    assert sum("--rewinding_steps=2000it" in r for r in runs) == 2
    parser = argparse.ArgumentParser()
    sweep.add_args(parser)
    instability.add_args(parser)
    args = parser.parse_args(["--quick", f"--root={tmp_path}"])
    lotteries, branches = instability.build(args)
    assert all(r[:2] == ["lottery_branch", "instability"] for r in branches)
    assert {r[0] for r in lotteries} == {"lottery"}
    # every branch names a lottery of phase 1 (the same flags but --levels)
    strip = lambda r: [a for a in r if not a.startswith("--levels=")]  # noqa: E731
    parents = [strip(r[1:]) for r in lotteries]
    for run in branches:
        flags = [a for a in strip(run[2:]) if not a.startswith(instability.BRANCH_FLAGS)]
        assert flags in parents


# ----------------------------------------------------------------------------- colab, notebook


def test_colab_platform_needs_the_drive(tmp_path: Path, monkeypatch) -> None:
    from open_lth.platforms.colab import ColabPlatform

    monkeypatch.setenv("OPEN_LTH_COLAB_DRIVE", str(tmp_path / "MyDrive"))
    with pytest.raises(UserError, match="mount the Drive"):
        ColabPlatform(None, None, "cpu")
    (tmp_path / "MyDrive").mkdir()
    platform = ColabPlatform(None, None, "cpu")
    assert platform.root == tmp_path / "MyDrive" / "open_lth_data"
    assert platform.dataset_root == platform.root / "datasets"
    (tmp_path / "MyDrive").rmdir()
    elsewhere = ColabPlatform(str(tmp_path / "runs"), None, "cpu")  # off the Drive: fine
    assert elsewhere.root == tmp_path / "runs"


def test_notebook_is_valid_and_runs(layout, monkeypatch, capsys) -> None:
    notebook = json.loads((REPO / "experiments" / "results.ipynb").read_text())
    assert notebook["nbformat"] == 4
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    monkeypatch.setenv("OPEN_LTH_RESULTS", str(layout.root))
    monkeypatch.chdir(REPO / "experiments")
    # Outside Jupyter (IPython is installed with the notebook runner): the print fallback.
    monkeypatch.setitem(sys.modules, "IPython.display", None)
    namespace: dict = {}
    for cell in code:
        exec("".join(cell["source"]), namespace)  # noqa: S102
    assert namespace["SETTING"] == "mnist_lenet_24_12 mnist 300it"
    assert "bytes of PNG" in capsys.readouterr().out
