"""`main.py report`: every figure and table a results root allows, an index, notes for
what it does not allow, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import synthetic

import open_lth.experiments.analysis.report  # noqa: F401 - registers the subcommand
from conftest import DATA

PNG = b"\x89PNG\r\n\x1a\n"
SETTING = "mnist_lenet_24_12_mnist_300it"
FIGURES = [
    "fig1_pruned_weights_level1",
    "fig2_accuracy_vs_sparsity",
    "fig3_test_error_vs_iteration_reset",
    "fig3_test_error_vs_iteration_reinit",
    "fig4_supermask_vs_sparsity",
    "fig6_interpolation",
    "fig7_instability_vs_k",
]


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> synthetic.Layout:
    return synthetic.make_results_root(tmp_path_factory.mktemp("results"))


def test_report_writes_every_figure_table_and_the_index(cli, layout, tmp_path: Path) -> None:
    out = tmp_path / "report"
    # --default_hparams is accepted (the CLI reads it for every subcommand) and ignored
    code, stdout, stderr = cli(
        "report",
        f"--root={layout.root}",
        f"--out={out}",
        "--table_level=2",
        "--default_hparams=mnist_lenet_300_100",
    )
    assert code == 0, stderr
    folder = out / SETTING
    index = (out / "index.md").read_text()
    for name in FIGURES:
        png = folder / f"{name}.png"
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000, name
        assert (folder / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
        assert f"({SETTING}/{name}.png)" in index
    for table in ("table2_layerwise_sparsity", "accuracy_vs_sparsity"):
        assert (folder / f"{table}.md").exists() and (folder / f"{table}.csv").exists()
    assert (folder / "table2_layerwise_sparsity.tex").read_text().startswith(r"\begin{tabular}")
    assert "Layer 1 (fc_layers.0.weight)" in index and "at level 2 (64% overall" in index
    assert "## Running or crashed" in index and str(layout.crashed) in index
    assert "## Train runs" in index and "Skipped" not in index
    assert (out / "runs.csv").exists()
    assert "note: skipped" not in stdout and f"report: {len(FIGURES)} figures" in stdout


def test_report_skips_what_the_runs_do_not_allow(cli, layout, tmp_path: Path) -> None:
    """Only level 0 of one lottery and a train run: no pruned weights, no branches."""
    root = tmp_path / "results"
    run = layout.lotteries[("magnitude", "reset")]
    src = layout.root / run / "replicate_1" / "level_0" / "main"
    dst = root / run / "replicate_1" / "level_0" / "main"
    dst.mkdir(parents=True)
    for f in ("hparams.json", "metrics.csv", "summary.json", "sparsity_report.json", "mask.pt"):
        (dst / f).write_bytes((src / f).read_bytes())
    out = tmp_path / "report"
    code, stdout, stderr = cli("report", f"--root={root}", f"--out={out}", "--quiet")
    assert code == 0, stderr
    assert "note: skipped" in stdout and "Figure 6" in stdout and "Figure 1" in stdout
    index = (out / "index.md").read_text()
    assert "## Skipped" in index
    assert (out / SETTING / "fig2_accuracy_vs_sparsity.png").exists()
    assert not (out / SETTING / "fig6_interpolation.png").exists()


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda tmp: tmp / "missing", "does not exist"),
        (lambda tmp: tmp, "no runs in"),
    ],
)
def test_report_errors_are_one_line(cli, tmp_path: Path, make, expected: str) -> None:
    root = make(tmp_path)
    code, stdout, stderr = cli("report", f"--root={root}", f"--out={tmp_path / 'out'}")
    assert code == 2 and expected in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_report_flags(cli, layout, tmp_path: Path) -> None:
    code, stdout, _ = cli(
        "report", f"--root={layout.root}", f"--out={tmp_path}", "--display_output_location"
    )
    assert code == 0 and stdout.strip() == str(tmp_path)
    code, _, stderr = cli("report", f"--root={layout.root}", "--percents=1,x")
    assert code == 2 and "--percents" in stderr
    code, _, stderr = cli("report", f"--root={layout.root}", "--histogram_level=0")
    assert code == 2 and "--histogram_level" in stderr


def test_report_of_a_real_lottery_run(cli, tmp_path: Path) -> None:
    """Two real levels on MNIST, then the report reads what the runner wrote."""
    root = tmp_path / "runs"
    code, _, stderr = cli(
        "lottery",
        "--default_hparams=mnist_lenet_300_100",
        f"--dataset_root={DATA}",
        f"--root={root}",
        "--subsample_fraction=0.02",
        "--training_steps=20it",
        "--eval_every=10it",
        "--levels=2",
        "--quiet",
    )
    assert code == 0, stderr
    out = tmp_path / "report"
    code, stdout, stderr = cli("report", f"--root={root}", f"--out={out}")
    assert code == 0, stderr
    folders = [p for p in out.iterdir() if p.is_dir()]
    assert len(folders) == 1
    for name in FIGURES[:3] + FIGURES[4:5]:
        assert (folders[0] / f"{name}.png").read_bytes()[:8] == PNG, name
    table = (folders[0] / "table2_layerwise_sparsity.md").read_text()
    report = json.loads(
        next(root.glob("lottery_*/replicate_1/level_2/main/sparsity_report.json")).read_text()
    )
    kept = report["layers"]["fc.weight"]["kept"] / report["layers"]["fc.weight"]["total"]
    assert f"{100 * kept:.3f}%" in table
