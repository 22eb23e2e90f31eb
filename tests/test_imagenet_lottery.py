"""experiments/imagenet_lottery.py, the README's ImageNet IMP with rewinding: the runs it
submits to Slurm over 8 GPUs (dry run), and its --quick variant run for real on a CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from image_folders import write_imagefolder

from open_lth.experiments.jobs import sweep

STUDY = Path(__file__).resolve().parents[1] / "experiments" / "imagenet_lottery.py"


def study(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("imagenet_lottery", STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return sweep.main(module.build, None, argv, extra_args=module.add_args)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_imagefolder(root / "imagenet")
    return root


def test_slurm_dry_run_submits_resnet_50_imp_with_rewinding_over_8_gpus(
    folder: Path, tmp_path: Path, capsys
) -> None:
    flags = ["--executor=slurm", "--slurm_nodes=1", "--slurm_gpus_per_node=8", "--dry_run"]
    assert study([f"--root={tmp_path}", f"--dataset_root={folder}", "--pack=1", *flags]) == 0
    out = capsys.readouterr().out
    for part in (
        "--default_hparams=imagenet_resnet_50",
        "--dataset_name=imagenet",
        "--rewinding_steps=6ep",
        "--levels=10",
        "--pruning_strategy=magnitude",
    ):
        assert part in out
    assert "job array of 1 tasks, each one DDP run of 1 nodes x 8 GPUs (8 processes)" in out
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_fisher_runs_score_on_ten_thousand_examples(folder: Path, tmp_path: Path, capsys) -> None:
    """Not on the whole of ImageNet at every level (the lottery's default)."""
    argv = [f"--root={tmp_path}", f"--dataset_root={folder}", "--pack=1", "--dry_run"]
    assert study([*argv, "--strategies=fisher,magnitude"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "--pruning_strategy" in line]
    fisher = [line for line in lines if "--pruning_strategy=fisher" in line]
    assert fisher and all("--fisher_examples=10000" in line for line in fisher)
    assert all("--fisher_examples" not in line for line in lines if line not in fisher)


def test_quick_runs_two_rewound_levels_on_a_cpu(folder: Path, tmp_path: Path) -> None:
    argv = ["--quick", f"--root={tmp_path}", f"--dataset_root={folder}", "--pack=1"]
    assert study(argv) == 0
    (replicate,) = tmp_path.glob("lottery_*/replicate_1")
    levels = sorted(p.name for p in replicate.glob("level_*") if (p / "main").is_dir())
    assert levels == ["level_0", "level_1", "level_2"]
    for level in levels:
        assert json.loads((replicate / level / "main" / "summary.json").read_text())
