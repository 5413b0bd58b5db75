"""Layering: reid (the torchreid plugin) builds on pcdms_aug, never the other way round.

pcdms_aug reaches the plugin only through entry points (setup.cfg: ``pcdms_aug.filter_trainers``,
``pcdms_aug.commands``), so it imports and runs without reid installed.
"""
import ast
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

from pcdms_aug.cli import main as cli
from pcdms_aug.generation.identity_filter import FILTER_TRAINERS, load_filter_trainer

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pcdms_aug"


def _is_reid(name) -> bool:
    return isinstance(name, str) and (name == "reid" or name.startswith("reid."))


def _reid_references(tree: ast.AST):
    """(line, what) of every import of reid: import statements, and a "reid..." string given to importlib."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, f"import {a.name}") for a in node.names if _is_reid(a.name))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_reid(node.module):
            yield node.lineno, f"from {node.module} import ..."
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            if "import_module" in func or func in ("__import__", "importlib.util.find_spec", "find_spec"):
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and _is_reid(arg.value):
                        yield node.lineno, f"{func}({arg.value!r})"


def test_the_scan_finds_each_kind_of_reid_import():
    source = ("import reid\nimport os, reid.splits\nfrom reid.datasets import REAL\n"
              "def f():\n    import importlib\n    importlib.import_module('reid.experiment')\n"
              "from . import reid_features\nimport reidx\n")
    assert [line for line, _ in _reid_references(ast.parse(source))] == [1, 2, 3, 6]


def test_no_module_of_pcdms_aug_imports_reid():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 40, "the scan sees too few files: it is broken"
    found = [f"{f.relative_to(ROOT)}:{line}: {what}" for f in files
             for line, what in _reid_references(ast.parse(f.read_text(encoding="utf-8"), str(f)))]
    assert not found, "pcdms_aug must not import reid:\n" + "\n".join(found)


def test_importing_every_pcdms_aug_module_loads_no_reid_module():
    # Every module is importable on CPU (none needs a GPU at import), so none is left out.
    code = ("import pkgutil, sys, importlib, pcdms_aug\n"
            "names = [m.name for m in pkgutil.walk_packages(pcdms_aug.__path__, 'pcdms_aug.')]\n"
            "for n in names: importlib.import_module(n)\n"
            "print(len(names))\n"
            "print(' '.join(sorted(m for m in sys.modules if m == 'reid' or m.startswith('reid.'))))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    count, loaded = (r.stdout.splitlines() + [""])[:2]
    assert int(count) > 40, "walk_packages found too few modules: the check is broken"
    assert loaded == "", f"importing pcdms_aug loaded {loaded}"


def test_the_plugin_is_reached_through_its_entry_points():
    (trainer,) = entry_points(group=FILTER_TRAINERS, name="train")
    assert trainer.value == "reid.filter_model:train_filter_model"
    from reid.filter_model import train_filter_model

    assert load_filter_trainer() is train_filter_model
    table = cli.commands()
    assert table["reid-experiment"][0] == "reid.experiment" and table["demo"][0] == "reid.demo"
    assert set(cli.COMMANDS) < set(table)
    assert table["demo"][1].startswith("the whole loop on the synthetic Market-1501")
    assert table["reid-experiment"][1].startswith("baseline versus augmented re-ID")


def test_help_lists_the_plugin_commands_without_importing_them():
    code = ("import sys\nfrom pcdms_aug.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('loaded:', ' '.join(m for m in sys.modules if m.startswith(('reid.', 'torchreid'))))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    commands = {line.split()[0] for line in r.stdout.splitlines() if line.startswith("    ")}
    assert {"reid-experiment", "demo", "generate"} <= commands
    assert r.stdout.splitlines()[-1].strip() == "loaded:"


# Rooms of pcdms_aug from the ground up: a module imports only from its own room or a lower one. cli dispatches
# commands by module name (strings), so it has no arrow to the rooms it runs; perf drives commands through it.
ROOMS = ("utils", "config", "data", "testing", "models", "stages", "pipelines", "metrics", "training",
         "generation", "cli", "perf")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every pcdms_aug module a file imports, at the top or inside a function, relative imports resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules and m != name}


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ROOMS) else None


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_every_module_lives_in_a_room():
    loose = sorted(m for m in _graph() if _room(m) is None and m not in ("pcdms_aug", "pcdms_aug.__main__"))
    assert not loose, f"top-level modules outside the rooms: {loose}"
    assert set(ROOMS) <= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}


def _upward(graph) -> list[str]:
    return [f"{src} -> {dst}" for src, dsts in sorted(graph.items()) for dst in sorted(dsts)
            if _room(src) and _room(dst) and ROOMS.index(_room(dst)) > ROOMS.index(_room(src))]


def test_lower_rooms_never_import_higher_ones():
    graph = _graph()
    assert len(graph) > 60 and sum(map(len, graph.values())) > 150, "the scan sees too few imports: it is broken"
    assert not _upward(graph), "imports from a lower room to a higher one:\n" + "\n".join(_upward(graph))


def test_the_room_scan_sees_imports_inside_functions_and_an_upward_one():
    graph = _graph()
    # training.data imports the refine-inputs format inside a function
    assert "pcdms_aug.data.refine_inputs" in graph["pcdms_aug.training.data"]
    graph["pcdms_aug.utils.io"] = graph["pcdms_aug.utils.io"] | {"pcdms_aug.training.loop"}
    assert _upward(graph) == ["pcdms_aug.utils.io -> pcdms_aug.training.loop"]


def test_no_import_circle():
    graph = {m: {d for d in deps if d != "pcdms_aug"} for m, deps in _graph().items() if m != "pcdms_aug"}
    state: dict[str, int] = {}
    circles = []

    def visit(m, trail):
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1 and not d.startswith(f"{m}.") and not m.startswith(f"{d}."):
                circles.append(" -> ".join(trail[trail.index(d):] + [d]) if d in trail else f"{m} -> {d}")
            elif d not in state:
                visit(d, trail + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_each_room_says_what_it_holds_and_what_it_may_import():
    """Each room's __init__ docstring names it and the rooms it may import; those are below it in ROOMS and cover
    what its modules do import ("every room below it": all of ROOMS before it)."""
    import re

    graph = _graph()
    for i, room in enumerate(ROOMS):
        doc = ast.get_docstring(ast.parse((PACKAGE / room / "__init__.py").read_text(encoding="utf-8"))) or ""
        assert f"Room ``{room}``" in doc, f"{room}/__init__.py does not say which room it is"
        said = " ".join(re.findall(r"(?:[Mm]ay import|Imports nothing)[^.]*\.", doc))
        assert said, f"{room}/__init__.py does not say what it may import"
        if "every room" in said:
            allowed = set(ROOMS[:i])
        else:
            allowed = set(re.findall(r"``(\w+)``", said))
        assert allowed <= set(ROOMS[:i]), f"{room} claims rooms that are not below it: {allowed - set(ROOMS[:i])}"
        used = {_room(d) for m, deps in graph.items() if _room(m) == room for d in deps} - {None, room}
        assert used <= allowed, f"{room} imports {sorted(used - allowed)}, which its docstring does not allow"
