"""Results roots as pandas DataFrames, one call each, robust to runs in progress and
crashed runs: what is on disk is kept, and every row says whether its stage is done.

    runs(root)       one row per stage directory (train, lottery level, branch)
    metrics(root)    every metrics.csv row, joined with the run identifiers
    sparsity(root)   kept/total/density per lottery level, in total and per layer
    curves(root)     the instability branches' error along the interpolation path
    barriers(root)   one row per instability branch: the error barriers (instability)
    pruned_weights(runs_df, level)   |w| of the weights each run pruned at a level

A stage is `done` when its summary.json exists (an instability branch: its
instability.json); otherwise it is `running-or-crashed`. A CSV line cut short by a
kill (no final newline) is dropped; every complete row before it is kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from open_lth.api import groups_of
from open_lth.foundations import paths
from open_lth.foundations.errors import UserError

DONE = "done"
INCOMPLETE = "running-or-crashed"

# The identifiers every loader's rows carry (a subset of runs()'s columns).
IDS = [
    "kind",
    "run",
    "replicate",
    "level",
    "branch",
    "branch_dir",
    "setting",
    "strategy",
    "start_mode",
    "start",
    "density",
    "remaining_pct",
    "status",
    "path",
]
SUMMARY_KEYS = [
    "end_iteration",
    "final_test_accuracy",
    "best_test_accuracy",
    "final_test_loss",
    "wall_seconds",
    "supermask_test_accuracy",
    "supermask_test_accuracy_bn_recomputed",
    "start_iteration",
]
INSTABILITY_FILES = ("curve.csv", "instability.json", "copy_1", "copy_2", "trunk")


# ----------------------------------------------------------------------------- reading


def check_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"results root {root} does not exist or is not a folder")
    return root


def read_json(path: Path) -> dict | None:
    """The parsed file, or None when it is missing or unreadable."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def complete_text(path: Path) -> str:
    """The file's complete lines: a last line without its newline was cut short."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return text


def read_csv(path: Path, numeric: list[str], text: list[str] = ()) -> pd.DataFrame:
    """A CSV with a header, keeping only complete rows whose `numeric` columns parse."""
    columns = [*numeric, *text]
    body = complete_text(path)
    if not body.strip():
        return pd.DataFrame(
            {c: pd.Series(dtype=float if c in numeric else object) for c in columns}
        )
    frame = pd.read_csv(io.StringIO(body), dtype=str, on_bad_lines="skip", skip_blank_lines=True)
    for c in columns:
        if c not in frame:
            frame[c] = np.nan
    frame = frame[columns].copy()
    for c in numeric:
        frame[c] = pd.to_numeric(frame[c], errors="coerce")
    return frame.dropna(subset=list(columns)).reset_index(drop=True)


def read_metrics(path: Path) -> pd.DataFrame:
    """metrics.csv (iteration, name, value), complete rows only."""
    frame = read_csv(path, ["iteration", "value"], ["name"])
    frame["iteration"] = frame["iteration"].astype("int64")
    return frame[["iteration", "name", "value"]]


def read_curve(path: Path) -> pd.DataFrame:
    """curve.csv (alpha, split, error, loss), complete rows only."""
    frame = read_csv(path, ["alpha", "error", "loss"], ["split"])
    return frame[["alpha", "split", "error", "loss"]]


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def try_load(path: Path) -> dict[str, torch.Tensor] | None:
    """A state dict or mask, or None when it is missing or unreadable (being written)."""
    try:
        return load_tensors(path)
    except Exception:  # a partial or foreign file is skipped, not fatal
        return None


# ----------------------------------------------------------------------------- stages


def flatten(hparams: dict | None) -> dict[str, Any]:
    """{group: {field: value}} -> {"group.field": value}. A branch's file nests the
    lottery's groups under "lottery" and its own under "branch"."""
    flat: dict[str, Any] = {}
    if not hparams:
        return flat
    for group, values in groups_of(hparams).items():
        if isinstance(values, dict):
            for field, value in values.items():
                flat[f"{group}.{field}"] = value
        elif group == "branch_name":
            flat["branch_name"] = values
    return flat


def start_of(flat: dict[str, Any]) -> tuple[str | None, str | None]:
    """(start_mode, start label): reset, rewind (label `rewind 2000it`) or reinit."""
    if "lottery.reinitialize" not in flat and "lottery.rewinding_steps" not in flat:
        return None, None
    if flat.get("lottery.reinitialize"):
        return "reinit", "reinit"
    if flat.get("lottery.rewinding_steps"):
        return "rewind", f"rewind {flat['lottery.rewinding_steps']}"
    return "reset", "reset"


def _density(directory: Path) -> tuple[float, int | None]:
    """(density, kept) from sparsity_report.json, else from mask.pt, else (nan, None)."""
    report = read_json(directory / "sparsity_report.json")
    if report and "density" in report:
        return float(report["density"]), report.get("kept")
    if (paths.mask(directory)).exists():
        mask = try_load(paths.mask(directory))
        if mask is None:
            return np.nan, None
        kept = sum(int(m.sum()) for m in mask.values())
        total = sum(m.numel() for m in mask.values())
        return kept / total if total else np.nan, kept
    return np.nan, None


def _stage_row(kind: str, run: str, replicate: int, level: float, path: Path) -> dict:
    return {
        "kind": kind,
        "run": run,
        "replicate": replicate,
        "level": level,
        "branch": None,
        "branch_dir": None,
        "path": str(path),
    }


def _main_stage(row: dict, path: Path, hparams_path: Path | None = None) -> dict:
    """A directory like a level's main/: summary.json says done."""
    summary = read_json(paths.summary(path))
    row["status"] = DONE if summary is not None else INCOMPLETE
    row["has_checkpoint"] = paths.checkpoint(path).exists()
    for key in SUMMARY_KEYS:
        row[key] = (summary or {}).get(key, np.nan)
    row.update(flatten(read_json(hparams_path or paths.hparams(path))))
    return row


def _branch_rows(level_dir: Path, base: dict) -> list[dict]:
    rows = []
    level_hparams = flatten(read_json(paths.hparams(paths.main(level_dir))))
    for child in sorted(level_dir.iterdir()):
        m = paths.HASHED.match(child.name)
        if not child.is_dir() or child == paths.main(level_dir) or not m:
            continue
        hp = read_json(paths.hparams(child))
        name = (hp or {}).get("branch_name") or m["name"]
        interpolation = name == "instability" or any(
            (child / f).exists() for f in INSTABILITY_FILES
        )
        stage = paths.main(child) if paths.main(child).is_dir() and not interpolation else child
        row = {**base, "kind": "branch", "branch": name, "branch_dir": child.name}
        row["path"] = str(stage)
        row.update(level_hparams)
        if interpolation:
            info = read_json(paths.instability(child))
            row["status"] = DONE if info is not None else INCOMPLETE
            row["has_checkpoint"] = any(
                paths.checkpoint(c).exists() for _, c in paths.numbered(child, "copy")
            )
            for key in SUMMARY_KEYS:
                row[key] = np.nan
            for key in ("train_instability", "test_instability", "start_iteration"):
                row[key] = (info or {}).get(key, np.nan)
            if info and info.get("density") is not None:
                row["density"] = float(info["density"])
            if info is None:  # in progress: k from the flags where they say it in iterations
                row["start_iteration"] = _branch_start(hp, row)
        else:
            row = _main_stage(row, stage, paths.hparams(child))
            row["_own_density"] = _density(stage)[0]
            if _missing(row.get("start_iteration")) and hp and "start_iteration" in hp:
                row["start_iteration"] = float(hp["start_iteration"])
        row.update(flatten(hp))
        rows.append(row)
    return rows


def _iterations(step: object) -> float:
    text = str(step or "")
    return float(text[:-2]) if re.fullmatch(r"\d+it", text) else np.nan


def _branch_start(hp: dict | None, row: dict) -> float:
    """The step k an instability branch's copies start from, before its
    instability.json says it: the start_iteration its hparams.json records (from
    format 2); in older folders --branch_rewinding_steps, else the level's own start
    (0, or the lottery's rewinding step at levels past 0), where they are in `it`."""
    if isinstance((hp or {}).get("start_iteration"), int):
        return float(hp["start_iteration"])
    k = (hp or {}).get("branch", {}).get("branch_rewinding_steps")
    if k:
        return _iterations(k)
    rewind = row.get("lottery.rewinding_steps")
    if row.get("level", 0) == 0 or not rewind:
        return 0.0
    return _iterations(rewind)


def _stages(root: Path) -> list[dict]:
    rows = []
    for run_dir in sorted(root.iterdir()):
        m = paths.HASHED.match(run_dir.name)
        if not run_dir.is_dir() or not m or m["name"] not in ("train", "lottery"):
            continue
        for replicate, rep_dir in paths.numbered(run_dir, "replicate"):
            if m["name"] == "train":
                main = paths.main(rep_dir)
                if main.is_dir():
                    row = _stage_row("train", run_dir.name, replicate, np.nan, main)
                    row = _main_stage(row, main)
                    row["density"] = 1.0
                    rows.append(row)
                continue
            for level, level_dir in paths.numbered(rep_dir, "level"):
                main = paths.main(level_dir)
                density, _ = _density(main)
                row = _stage_row("lottery", run_dir.name, replicate, level, main)
                if main.is_dir():
                    row = _main_stage(dict(row), main)
                    row["density"] = density
                    rows.append(row)
                base = {**_stage_row("lottery", run_dir.name, replicate, level, main)}
                base["density"] = density
                for branch in _branch_rows(level_dir, base):
                    own = branch.pop("_own_density", np.nan)
                    if not np.isnan(own):
                        branch["density"] = own
                    rows.append(branch)
    return rows


def _settings(frame: pd.DataFrame) -> pd.Series:
    """A readable label of what runs share apart from the strategy and the start:
    `mnist_lenet_300_100 mnist 300it`, with a short hash where two differ otherwise.
    Train runs are keyed on their dataset, model and training groups, lottery runs and
    their branches also on the pruning group (the strategy aside)."""
    skip = {"pruning.pruning_strategy", "lottery.reinitialize", "lottery.rewinding_steps"}
    keys = pd.Series("", index=frame.index, dtype=object)
    labels: dict[tuple[bool, str], str] = {}
    for is_train, part in frame.groupby(frame["kind"] == "train", sort=False):
        groups = ("dataset", "model", "training") + (() if is_train else ("pruning",))
        cols = [c for c in part.columns if c.split(".")[0] in groups and c not in skip]
        cols = [c for c in cols if part[c].notna().any()]
        for index, record in zip(part.index, part[sorted(cols)].to_dict("records"), strict=True):
            # A False flag is a boolean's default (the convention): a folder made before
            # the flag existed (no value) shares the setting of one made after.
            key = "|".join(
                f"{k}={v!r}" for k, v in record.items() if not _missing(v) and v is not False
            )
            keys[index] = (is_train, key)
            if (is_train, key) not in labels:
                parts = [record.get(c) for c in ("model.model_name", "dataset.dataset_name")]
                parts.append(record.get("training.training_steps"))
                label = " ".join(str(p) for p in parts if isinstance(p, str))
                labels[(is_train, key)] = label or "unknown"
    for is_train in (False, True):
        mine = {k: v for k, v in labels.items() if k[0] == is_train}
        counts = pd.Series(list(mine.values()), dtype=object).value_counts()
        for k, label in mine.items():
            if counts[label] > 1:
                digest = hashlib.md5(k[1].encode()).hexdigest()[:6]  # noqa: S324 - a label
                labels[k] = f"{label} #{digest}"
    return keys.map(labels)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def runs(root: str | Path) -> pd.DataFrame:
    """One row per stage directory, with its status, summary, flattened hparams
    (`training.lr`, `pruning.pruning_strategy`, ...) and the derived `strategy`,
    `start_mode` (reset/rewind/reinit), `start` (label), `density`, `remaining_pct`
    and `setting` (what the runs of one figure share)."""
    rows = _stages(check_root(root))
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=[*IDS, "has_checkpoint", *SUMMARY_KEYS])
    starts = [start_of(r) for r in rows]
    frame["start_mode"] = [s[0] for s in starts]
    frame["start"] = [s[1] for s in starts]
    if "pruning.pruning_strategy" in frame:
        strategy = frame["pruning.pruning_strategy"].where(frame["kind"] != "train")
    else:
        strategy = pd.Series(None, index=frame.index, dtype=object)
    frame["strategy"] = strategy.where(strategy.notna(), None)
    frame["density"] = pd.to_numeric(frame["density"], errors="coerce")
    frame["remaining_pct"] = 100 * frame["density"]
    frame["setting"] = _settings(frame)
    frame["replicate"] = frame["replicate"].astype("int64")
    frame["level"] = frame["level"].astype("Int64")
    last = [c for c in frame.columns if c not in IDS]
    return frame[[*IDS, *last]].reset_index(drop=True)


def _ids(row: pd.Series) -> dict:
    return {k: row[k] for k in IDS}


# ----------------------------------------------------------------------------- metrics


def _frame(parts: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]


def metrics(root: str | Path, runs_df: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every metrics.csv row (iteration, name, value) with the identifiers of its
    stage; an instability branch's two copies are told apart by `copy` (1, 2)."""
    table = runs(root) if runs_df is None else runs_df
    parts = []
    for _, row in table.iterrows():
        path = Path(row["path"])
        sources = [(np.nan, paths.metrics(path))]
        if row["kind"] == "branch" and not paths.metrics(path).exists():
            sources = [(n, paths.metrics(c)) for n, c in paths.numbered(path, "copy")]
        for copy, csv in sources:
            data = read_metrics(csv)
            if data.empty:
                continue
            for key, value in _ids(row).items():
                data[key] = value
            data["copy"] = copy
            parts.append(data)
    return _frame(parts, [*IDS, "copy", "iteration", "name", "value"])


# ----------------------------------------------------------------------------- sparsity


def _layer_order(main: Path) -> list[str]:
    """The model's order of the prunable layers (the mask's), for tables."""
    return list(try_load(paths.mask(main)) or {})


def sparsity(
    root: str | Path, runs_df: pd.DataFrame | None = None, from_masks: bool = False
) -> pd.DataFrame:
    """kept/total/density of each lottery level, one row per layer plus one with
    layer == "total" (is_total); `layer_index` is the layer's place in the model.
    Read from sparsity_report.json, or counted from mask.pt with `from_masks=True`
    (also when a report is missing)."""
    table = runs(root) if runs_df is None else runs_df
    table = table[table["kind"] == "lottery"]
    parts = []
    orders: dict[str, list[str]] = {}
    for _, row in table.iterrows():
        main = Path(row["path"])
        report = None if from_masks else read_json(main / "sparsity_report.json")
        if report is None and (paths.mask(main)).exists():
            mask = try_load(paths.mask(main))
            if mask is None:
                continue
            layers = {n: {"kept": int(m.sum()), "total": m.numel()} for n, m in mask.items()}
            orders.setdefault(row["run"], list(mask))
        elif report is not None:
            layers = report.get("layers", {})
        else:
            continue
        if row["run"] not in orders:
            orders[row["run"]] = _layer_order(main)
        order = orders[row["run"]]
        names = sorted(layers, key=lambda n: (order.index(n) if n in order else len(order), n))
        records = [
            {"layer": n, "layer_index": i, "is_total": False, **layers[n]}
            for i, n in enumerate(names)
        ]
        kept = sum(r["kept"] for r in records)
        total = sum(r["total"] for r in records)
        records.append(
            {"layer": "total", "layer_index": len(names), "is_total": True, "kept": kept}
            | {"total": total}
        )
        data = pd.DataFrame(records)
        data["density"] = data["kept"] / data["total"]
        data["remaining_pct"] = 100 * data["density"]
        for key in ("run", "replicate", "level", "setting", "strategy", "start_mode", "start"):
            data[key] = row[key]
        data["status"] = row["status"]
        data["level_density"] = row["density"]
        parts.append(data)
    columns = ["run", "replicate", "level", "setting", "strategy", "start_mode", "start"]
    columns += ["status", "level_density", "layer", "layer_index", "is_total", "kept", "total"]
    return _frame(parts, [*columns, "density", "remaining_pct"])


# ----------------------------------------------------------------------------- instability


def _instability_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The branch rows whose folder is an instability branch's (copies, curve, barriers)."""
    if table.empty:
        return table
    paths = table["path"].map(Path)
    has = paths.map(lambda p: any((p / f).exists() for f in INSTABILITY_FILES))
    return table[(table["kind"] == "branch") & (has | (table["branch"] == "instability"))]


def curves(root: str | Path, runs_df: pd.DataFrame | None = None) -> pd.DataFrame:
    """Error and loss along the linear path between the two copies of each
    instability branch (alpha 0..1, split train/test); a partial curve is kept."""
    table = _instability_rows(runs(root) if runs_df is None else runs_df)
    parts = []
    for _, row in table.iterrows():
        data = read_curve(Path(row["path"]) / "curve.csv")
        if data.empty:
            continue
        for key, value in _ids(row).items():
            data[key] = value
        data["start_iteration"] = row.get("start_iteration", np.nan)
        parts.append(data)
    columns = [*IDS, "start_iteration", "alpha", "split", "error", "loss"]
    return _frame(parts, columns)


def barrier(curve: pd.DataFrame, split: str) -> float:
    """Instability from a curve: the highest error on the path minus the mean of the
    two ends' errors (nan unless both ends are there)."""
    part = curve[curve["split"] == split]
    ends = part[part["alpha"].isin([0.0, 1.0])]
    if ends["alpha"].nunique() < 2:
        return np.nan
    return float(part["error"].max() - ends.groupby("alpha")["error"].mean().mean())


def barriers(root: str | Path, runs_df: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per instability branch: train/test instability, the copies' end
    errors and the step k the copies started from. A branch without its
    instability.json yet gets the barrier of its (partial) curve, `source` = curve."""
    table = _instability_rows(runs(root) if runs_df is None else runs_df)
    records = []
    for _, row in table.iterrows():
        path = Path(row["path"])
        info = read_json(paths.instability(path))
        record = _ids(row)
        if info is not None:
            record["source"] = "instability.json"
            for split in ("train", "test"):
                record[f"{split}_instability"] = info.get(f"{split}_instability", np.nan)
                ends = list(info.get(f"{split}_end_errors") or [])
                for i in (0, 1):
                    record[f"{split}_end_error_{i + 1}"] = ends[i] if i < len(ends) else np.nan
            for key in ("start_iteration", "interpolation_points", "bn_stats"):
                record[key] = info.get(key, np.nan)
            if info.get("density") is not None:
                record["density"] = float(info["density"])
                record["remaining_pct"] = 100 * record["density"]
        else:
            curve = read_curve(path / "curve.csv")
            record["source"] = "curve.csv" if not curve.empty else None
            for split in ("train", "test"):
                record[f"{split}_instability"] = barrier(curve, split)
                ends = curve[(curve["split"] == split) & curve["alpha"].isin([0.0, 1.0])]
                for i, alpha in enumerate((0.0, 1.0)):
                    values = ends.loc[ends["alpha"] == alpha, "error"]
                    record[f"{split}_end_error_{i + 1}"] = (
                        float(values.iloc[0]) if len(values) else np.nan
                    )
            record["start_iteration"] = row.get("start_iteration", np.nan)
            record["interpolation_points"] = np.nan
            record["bn_stats"] = row.get("branch.bn_stats", np.nan)
        records.append(record)
    columns = [*IDS, "source", "start_iteration", "train_instability", "test_instability"]
    columns += [f"{s}_end_error_{i}" for s in ("train", "test") for i in (1, 2)]
    columns += ["interpolation_points", "bn_stats"]
    if not records:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(records)[columns]
    for c in ("start_iteration", "train_instability", "test_instability"):
        frame[c] = pd.to_numeric(frame[c], errors="coerce")
    return frame


# ----------------------------------------------------------------------------- weights


def final_weights(main: Path, end_iteration: float | None = None) -> Path | None:
    """A finished stage's trained weights: weights_it<end>.pt (the latest saved)."""
    if end_iteration is not None and not pd.isna(end_iteration):
        path = main / f"weights_it{int(end_iteration)}.pt"
        if path.exists():
            return path
    found = []
    for p in main.glob("weights_it*.pt"):
        suffix = p.stem.removeprefix("weights_it")
        if suffix.isdigit():
            found.append((int(suffix), p))
    return max(found)[1] if len(found) > 1 else None


def pruned_weights(
    root: str | Path | pd.DataFrame, level: int = 1, replicate: int | None = None
) -> pd.DataFrame:
    """|w| of every weight that survived level L-1, from L-1's trained weights, with
    `pruned` = True for those level L's mask removed (mask_{L-1} & ~mask_L). One
    replicate per run: `replicate`, or each run's lowest with the files there."""
    table = root if isinstance(root, pd.DataFrame) else runs(root)
    table = table[table["kind"] == "lottery"]
    parts = []
    columns = ["run", "setting", "strategy", "start_mode", "start", "replicate", "level"]
    for _, group in table.groupby("run", sort=True):
        before = group[(group["level"] == level - 1) & (group["status"] == DONE)]
        after = group[group["level"] == level]
        reps = sorted(set(before["replicate"]) & set(after["replicate"]))
        if replicate is not None:
            reps = [r for r in reps if r == replicate]
        for rep in reps:
            b = before[before["replicate"] == rep].iloc[0]
            a = after[after["replicate"] == rep].iloc[0]
            weights_path = final_weights(Path(b["path"]), b.get("end_iteration"))
            masks = [paths.mask(Path(b["path"])), paths.mask(Path(a["path"]))]
            if weights_path is None or not all(m.exists() for m in masks):
                continue
            weights = load_tensors(weights_path)
            previous, current = (load_tensors(m) for m in masks)
            for layer in current:
                survived = previous[layer].bool()
                w = weights[layer][survived].abs().float().numpy()
                gone = (survived & ~current[layer].bool())[survived].numpy()
                data = pd.DataFrame({"layer": layer, "magnitude": w, "pruned": gone})
                for key in columns:
                    data[key] = a[key] if key != "level" else level
                parts.append(data)
            break
    frame = _frame(parts, [*columns, "layer", "magnitude", "pruned"])
    for c in ("run", "setting", "strategy", "start", "layer"):
        frame[c] = frame[c].astype("category")
    return frame
