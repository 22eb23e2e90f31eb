"""The README stays true: its ten-minute tour runs as written (with fewer steps and a
tenth of MNIST, substituted below), the Python of step 5 included, and the docs build
as a site with no broken link or page left out of the navigation."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import DATA, REPO

# What the test changes in the tour's text, and why: fewer steps and a subsample so
# that it runs in about a minute; the data where the tests find it.
SUBSTITUTIONS = {
    "--training_steps=2000it": "--training_steps=60it --subsample_fraction=0.05 --eval_every=30it",
    "--interpolation_points=11": "--interpolation_points=3",
    "../shared/data": str(DATA),
}


def tour() -> tuple[list[str], list[str]]:
    """The tour's bash and python blocks, in order."""
    text = (REPO / "README.md").read_text()
    section = text.split("## A ten-minute tour", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(bash|python)\n(.*?)```", section, re.S)
    return [b for kind, b in blocks if kind == "bash"], [
        b for kind, b in blocks if kind == "python"
    ]


def substituted(block: str) -> str:
    for old, new in SUBSTITUTIONS.items():
        block = block.replace(old, new)
    return block


def test_the_readme_is_short_and_its_tour_has_every_step() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) < 250
    bash, python = tour()
    commands = " ".join(bash)
    for subcommand in ("train", "lottery", "lottery_branch instability", "report", "export"):
        assert f"python main.py {subcommand} " in commands, subcommand
    assert "--pruning_strategy=fisher" in commands and len(python) == 1


def test_the_tour_runs_as_written(tmp_path) -> None:
    bash, python = tour()
    (tmp_path / "main.py").symlink_to(REPO / "main.py")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # `python` in the tour is this interpreter (a symlink would lose its virtualenv)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OPEN_LTH_OFFLINE": "1"}
    script = "set -euo pipefail\n" + "\n".join(substituted(b) for b in bash)
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (tmp_path / "report" / "index.md").exists()
    assert (tmp_path / "ticket.safetensors").exists()
    assert len(list(tmp_path.glob("runs/lottery_*/replicate_1/level_2/instability_*"))) == 1
    done = subprocess.run(
        [sys.executable, "-c", substituted(python[0])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "level 2: logged" in done.stdout and "weights kept" in done.stdout


def test_the_docs_build_as_a_site(tmp_path) -> None:
    """`mkdocs build --strict`: a broken link, or a page missing from the navigation,
    fails."""
    done = subprocess.run(
        # not -q: it hides the warnings that --strict turns into a failure
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "python" / "index.html").exists()
