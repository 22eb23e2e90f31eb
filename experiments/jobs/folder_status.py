"""`main.py status` on a results root that no sweep started: each run's state read from
its folders. A run is a train or lottery replicate (`<kind>_<hash>/replicate_<r>`, with
its levels) or a branch (`level_<L>/<name>_<hash>`):

    running   a process holds its lock (open_lth.foundations.store.RunLock) now
    done      every stage in it wrote its summary
    crashed   it has files, is not done, and no process holds its lock
    waiting   its folder holds nothing yet
"""

from __future__ import annotations

from pathlib import Path

from open_lth.experiments.analysis import load
from open_lth.foundations import paths, registries
from open_lth.foundations.errors import UserError
from open_lth.foundations.store import lock_held
from open_lth.lottery.levels import level_dir
from open_lth.training import stage

Row = tuple[str, str, str]  # (state, folder relative to the root, detail)


def last_iteration(directory: Path) -> int | None:
    """The last iteration a stage logged (metrics.csv), else its checkpoint's."""
    logged = load.read_metrics(paths.metrics(directory))
    if not logged.empty:
        return int(logged["iteration"].max())
    checkpoint = load.try_load(paths.checkpoint(directory)) if directory.is_dir() else None
    return int(checkpoint["iteration"]) if checkpoint and "iteration" in checkpoint else None


def has_files(directory: Path) -> bool:
    """Anything but the lock file: a run that only took its lock has written nothing."""
    return directory.is_dir() and any(
        p.is_file() and p.name != ".lock" for p in directory.rglob("*")
    )


def state_of(directory: Path, done: bool) -> str:
    if lock_held(directory):
        return "running"
    if done:
        return "done"
    return "crashed" if has_files(directory) else "waiting"


def at(directory: Path) -> str:
    iteration = last_iteration(directory)
    if iteration is not None:
        return f"at iteration {iteration}"
    search = load.try_load(paths.search_checkpoint(directory)) if directory.is_dir() else None
    if search and "iteration" in search:  # the level's mask is still being found
        return f"searching its mask (Gem-Miner), at step {int(search['iteration'])}"
    return "no iteration logged yet"


def train_row(replicate: Path) -> tuple[str, str]:
    main = paths.main(replicate)
    done = stage.is_done(main)
    if not done:
        return state_of(replicate, done), at(main)
    summary = stage.read_summary(main)
    detail = f"iteration {summary['end_iteration']}, test accuracy"
    return state_of(replicate, done), f"{detail} {summary['final_test_accuracy']:.4f}"


def lottery_row(replicate: Path, levels: list[int]) -> tuple[str, str]:
    finished = [L for L in levels if stage.is_done(level_dir(replicate, L))]
    done = bool(levels) and len(finished) == len(levels)
    trained = f"levels 0-{max(finished)} done" if finished else "no level done"
    if done:
        last = level_dir(replicate, max(levels))
        accuracy = stage.read_summary(last)["final_test_accuracy"]
        density, _ = load._density(last)
        return state_of(
            replicate, done
        ), f"{trained}; the last: {100 * density:.1f}% of the weights, test accuracy {accuracy:.4f}"
    current = min(set(levels) - set(finished), default=None)
    if current is None:  # between two levels: the next one's folder is not made yet
        return state_of(replicate, done), trained
    detail = f"level {current} {at(level_dir(replicate, current))}"
    return state_of(replicate, done), f"{detail} ({trained})" if finished else detail


def branch_row(branch: Path, name: str) -> tuple[str, str]:
    record = load.read_json(paths.hparams(branch)) or {}
    name = record.get("branch_name", name)
    done = False
    if name in registries.branches and "branch" in record:
        branch_type = registries.branches.get(name)
        try:
            hparams = branch_type.hparams_type.from_dict(record["branch"])
        except (UserError, TypeError):
            hparams = None  # a folder from another version: judged by its files alone
        done = hparams is not None and branch_type(hparams).is_done(branch)
    if done:
        return state_of(branch, done), name
    # A branch trains in main/ (controls) or in copy_1/, copy_2/ (instability).
    stages = [paths.main(branch), *(c for _, c in paths.numbered(branch, "copy"))]
    iterations = [i for i in map(last_iteration, stages) if i is not None]
    detail = f"at iteration {max(iterations)}" if iterations else "no iteration logged yet"
    return state_of(branch, done), f"{name} {detail}"


def rows(root: Path) -> list[Row]:
    """One row per run found under the root, in folder order."""
    found: list[Row] = []

    def add(row: tuple[str, str], folder: Path) -> None:
        found.append((row[0], str(folder.relative_to(root)), row[1]))

    for run in sorted(root.iterdir()):
        m = paths.HASHED.match(run.name)
        if not run.is_dir() or not m or m["name"] not in ("train", "lottery"):
            continue
        for _, replicate in paths.numbered(run, "replicate"):
            if m["name"] == "train":
                add(train_row(replicate), replicate)
                continue
            levels = paths.numbered(replicate, "level")
            add(lottery_row(replicate, [L for L, _ in levels]), replicate)
            for _, level in levels:
                for branch in sorted(level.iterdir()):
                    b = paths.HASHED.match(branch.name)
                    if branch.is_dir() and b:
                        add(branch_row(branch, b["name"]), branch)
    return found


def table(root: Path) -> str:
    """The rows as aligned lines and a count line; one clear error where there are none."""
    found = rows(load.check_root(root))
    if not found:
        raise UserError(
            f"no runs under {root} (no train_<hash>/replicate_<r> or lottery_<hash>/"
            "replicate_<r> folders there)"
        )
    width = max(len(where) for _, where, _ in found)
    lines = [f"{state:<8} {where:<{width}}  {detail}" for state, where, detail in found]
    states = ("done", "running", "crashed", "waiting")
    counts = {s: sum(r[0] == s for r in found) for s in states}
    lines.append(f"{len(found)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)
