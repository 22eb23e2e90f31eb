"""benchmarks/imagenet_speed.py's smoke mode on the CPU: every measurement runs (the
real numbers need a GPU: benchmarks/gpu_checks.sh imagenet)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--device=cpu", "--model=imagenet_resnet_18_8", "--images=64", "--batch_size=8"]


def test_smoke_mode_measures_every_pipeline() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(REPO / "benchmarks" / "imagenet_speed.py")
    done = subprocess.run(
        [sys.executable, script, *SMOKE, "--steps=2"],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for label in ("files:", "shards:", "threads:", "processes:", "(a) ", "(b) ", "(c) ", "(d) "):
        line = next(line for line in out.splitlines() if label in line)
        assert float(re.search(r"([\d.]+) images/s", line).group(1)) > 0, line
    assert re.search(r"\(b\)/\(d\) = [\d.]+ .*\(b\)/\(a\) = [\d.]+", out)
    assert "decoder PillowDecoder" in out  # the CPU's path
