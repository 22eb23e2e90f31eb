"""The layout's arrows (DESIGN.md): dependencies point inward, and the core imports no
plugin; open_lth/main.py is where the plugins join. The plugin folders at the top of the
checkout are imported as sub-packages of open_lth (`open_lth.datasets`), never under
their plain names, which clash with common packages (Hugging Face's `datasets`)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLUGINS = ("models", "datasets", "pruning", "platforms")
# What each room of the core may import from the project.
ALLOWED = {
    "open_lth.foundations": ("open_lth.foundations",),
    "open_lth.training": ("open_lth.foundations", "open_lth.training"),
    "open_lth.lottery": ("open_lth.foundations", "open_lth.training", "open_lth.lottery"),
    "open_lth.cli": ("open_lth.foundations", "open_lth.training"),
}
PROJECT = ("open_lth", "main", "experiments", "benchmarks", *PLUGINS)
# The plugins as the code imports them.
PLUGIN_PACKAGES = tuple(f"open_lth.{p}" for p in (*PLUGINS, "experiments"))


def project_imports(path: Path) -> set[str]:
    """Every project module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PROJECT}


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    return f"open_lth.{name}" if name.split(".")[0] in (*PLUGINS, "experiments") else name


def core_modules() -> list[Path]:
    return sorted((REPO / "open_lth").rglob("*.py"))


def test_the_core_has_rooms_and_imports_inward() -> None:
    flat = [p.name for p in (REPO / "open_lth").glob("*.py")]
    assert sorted(flat) == [
        "__init__.py",
        "__main__.py",
        "api.py",
        "cli.py",
        "main.py",
        "tickets.py",
    ], flat
    wrong = []
    for path in core_modules():
        name = module_name(path)
        room = next((r for r in ALLOWED if name == r or name.startswith(r + ".")), None)
        if room is None:  # __init__; main.py, where the plugins join; api.py and tickets.py
            continue
        for imported in project_imports(path):
            # `from open_lth.training import data` names the room and the module
            if imported in ("open_lth", *ALLOWED[room]):
                continue
            if not any(imported.startswith(r + ".") for r in ALLOWED[room]):
                wrong.append(f"{name} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_the_lottery_runner_builds_on_the_pack_and_not_the_reverse() -> None:
    """A lone lottery run is a pack of one: the runner imports the pack, and the pack
    (which asks its runs through a Protocol) imports neither the runner nor the CLI."""
    lottery = REPO / "open_lth" / "lottery"
    assert "open_lth.lottery.pack" in project_imports(lottery / "runner.py")
    pack = project_imports(lottery / "pack.py")
    assert not {i for i in pack if i.startswith(("open_lth.lottery.runner", "open_lth.cli"))}


def test_plugins_import_the_core_and_not_each_other() -> None:
    wrong = []
    for plugin in PLUGINS:
        for path in sorted((REPO / plugin).rglob("*.py")):
            for imported in project_imports(path):
                other_plugin = imported.startswith(PLUGIN_PACKAGES) and not imported.startswith(
                    f"open_lth.{plugin}"
                )
                if imported.split(".")[0] != "open_lth" or other_plugin:
                    wrong.append(f"{module_name(path)} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_every_module_imports_alone() -> None:
    """No circular imports: each module of the core and the plugins imported first, in
    a process where nothing of the project is loaded yet (torch stays loaded)."""
    names = [module_name(p) for p in core_modules()]
    names += [module_name(p) for plugin in PLUGINS for p in sorted((REPO / plugin).rglob("*.py"))]
    names += [module_name(p) for p in sorted((REPO / "experiments").rglob("*.py"))]
    script = (
        "import importlib, sys, torch\n"
        f"project = {PROJECT!r}\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] in project]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        print(f'{name}: {type(e).__name__}: {e}')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and not result.stdout, result.stdout + result.stderr


EXPERIMENTS = "open_lth.experiments"
# What each room of experiments/ may import of experiments/: jobs reads a results root
# through analysis/load.py (`main.py status` on a root no sweep started) and nothing else
# of analysis; analysis runs nothing. Neither imports a study.
EXPERIMENT_ROOMS = {
    "jobs": (f"{EXPERIMENTS}.jobs", f"{EXPERIMENTS}.analysis", f"{EXPERIMENTS}.analysis.load"),
    "analysis": (f"{EXPERIMENTS}.analysis",),
}


def test_experiments_has_a_jobs_room_and_an_analysis_room() -> None:
    """experiments/ holds the two rooms, the studies (scripts run by path) and the
    notebooks; jobs and analysis import each other only along the one allowed arrow."""
    top = REPO / "experiments"
    assert sorted(p.name for p in top.iterdir() if p.is_dir() and p.name != "__pycache__") == [
        "analysis",
        "jobs",
    ]
    wrong = []
    for room, allowed in EXPERIMENT_ROOMS.items():
        assert (top / room / "__init__.py").read_text().startswith('"""'), room
        for path in sorted((top / room).rglob("*.py")):
            for imported in project_imports(path):
                inside = imported.startswith(f"{EXPERIMENTS}.")
                # `from open_lth.experiments.jobs import sweep` names the room and the module
                if inside and imported not in allowed and not imported.startswith(allowed[0] + "."):
                    wrong.append(f"{module_name(path)} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_benchmarks_and_experiments_import_nothing_of_the_tests() -> None:
    """The tests' fixtures live under tests/ and are the tests' own: a benchmark or an
    experiment that needs a tool (synthetic_imagenet.py) finds it in experiments/jobs/."""
    test_modules = {"tests", *(p.stem for p in (REPO / "tests").glob("*.py"))}
    wrong = []
    for path in sorted(
        [*(REPO / "benchmarks").rglob("*.py"), *(REPO / "experiments").rglob("*.py")]
    ):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            wrong += [
                f"{path.relative_to(REPO)} imports {n}"
                for n in names
                if n.split(".")[0] in test_modules
            ]
    assert not wrong, "\n".join(wrong)


def test_main_loads_every_plugin() -> None:
    """After main.load_plugins every registry is filled: models, data sets, strategies,
    branches, platforms and every subcommand."""
    from open_lth.foundations import registries
    from open_lth.main import load_plugins

    load_plugins()
    assert {"lottery", "pack", "train", "lottery_branch", "report", "status"} <= set(
        registries.subcommands.names()
    )
    assert {"randomly_prune", "instability"} <= set(registries.branches.names())
    assert {"magnitude", "fisher", "random", "gem_miner"} <= set(registries.strategies.names())
    assert {"mnist", "cifar10"} <= set(registries.datasets.names())


LAYOUT_NAMES = {"main", "summary.json", "instability.json", "mask.pt", "metrics.csv"}
LAYOUT_NAMES |= {"checkpoint.pt", "hparams.json"}


def test_one_module_owns_the_on_disk_layout() -> None:
    """Folder and file names of a run (`main`, `summary.json`, `level_<L>`, ...) are
    spelled in open_lth/foundations/paths.py only: the core that writes them and the
    tools that read them (experiments' loading, status, sweeps) ask it."""
    owner = REPO / "open_lth" / "foundations" / "paths.py"
    experiments = REPO / "experiments"
    readers = [
        experiments / n for n in ("analysis/load.py", "jobs/sweep.py", "jobs/folder_status.py")
    ]
    spelled = []
    for path in [*core_modules(), *readers]:
        if path == owner:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            # A path joined by hand: `folder / "main"`, `run / f"replicate_{r}"`, a glob.
            joined = isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
            part = node.right if joined else node
            text = None
            if isinstance(part, ast.Constant) and isinstance(part.value, str):
                text = part.value
            elif isinstance(part, ast.JoinedStr) and isinstance(part.values[0], ast.Constant):
                text = part.values[0].value
            if text is None:
                continue
            prefix = text.startswith(("level_", "replicate_", "copy_"))
            numbered = prefix and (joined or text.endswith("*"))
            if (joined and text in LAYOUT_NAMES) or numbered:
                spelled.append(f"{path.relative_to(REPO)}:{node.lineno}: {text!r}")
    assert not spelled, "\n".join(spelled)


def test_functions_are_short() -> None:
    """A reader takes in a function at once: none in open_lth/ is longer than 60 lines,
    none in pruning/ or experiments/ longer than 79."""
    limits = {"open_lth": 60, "pruning": 79, "experiments": 79}
    long = []
    for room, limit in limits.items():
        for path in sorted((REPO / room).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > limit:
                        long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {lines}")
    assert not long, "\n".join(long)
