"""How long each level of the lottery runs under a results root took, from the files
they wrote (a level starts when its hparams.json is written and ends with its
summary.json), and from those the time of the LeNet study's whole sweep: 18 runs (3
replicates x magnitude, fisher, random x reset, re-init) in packs of 6, 27 levels each
(0-26), the later levels each taking what level 1 took (pruning included).

    python benchmarks/level_times.py <root of one pack's runs, levels 0 and 1>
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the results root of one pack's runs")
    root = parser.parse_args().root
    runs = sorted(root.glob("lottery_*/replicate_*"))
    if not runs:
        sys.exit(f"error: no lottery runs under {root}")
    missing = [
        f for r in runs for L in (0, 1) for f in (r / f"level_{L}/main/summary.json",)
        if not f.exists()
    ]  # fmt: skip
    if missing:
        sys.exit(f"error: {missing[0]} is missing: levels 0 and 1 of every run must be done")
    # A pack trains its runs' levels in lock-step: every level 0 ends before any level 1
    # starts. Runs trained one after the other would give a meaningless estimate.
    first_level1 = min((r / "level_1/main/hparams.json").stat().st_mtime for r in runs)
    last_level0 = max((r / "level_0/main/summary.json").stat().st_mtime for r in runs)
    if first_level1 < last_level0:
        sys.exit(f"error: the runs under {root} did not train as one pack (a level 1 began "
                 "before every level 0 ended); give the root of one pack's runs")  # fmt: skip
    bounds = {}
    for level in (0, 1):
        starts = [(r / f"level_{level}/main/hparams.json").stat().st_mtime for r in runs]
        ends = [(r / f"level_{level}/main/summary.json").stat().st_mtime for r in runs]
        bounds[level] = (min(starts), max(ends))
        walls = [
            json.loads((r / f"level_{level}/main/summary.json").read_text())["wall_seconds"]
            for r in runs
        ]
        print(
            f"level {level}: {bounds[level][1] - bounds[level][0]:.1f} s for a pack of "
            f"{len(runs)} (training loop {max(walls):.1f} s by the trainer's clock)"
        )
    level0 = bounds[0][1] - bounds[0][0]
    # Level 1 from the end of level 0: its pruning, supermask and set-up included.
    level1 = bounds[1][1] - bounds[0][1]
    packs = -(-18 // len(runs))
    total = packs * (level0 + 26 * level1)
    print(
        f"the LeNet study's sweep (18 runs, 27 levels) in {packs} packs of {len(runs)}: "
        f"{packs} x ({level0:.1f} + 26 x {level1:.1f}) s = {total / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
