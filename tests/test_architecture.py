"""The package's layout is its architecture: the import graph, read from the source, keeps to it.

Every import counts, also one inside a function (a deferred import is still a dependency). The core (the modules
at the top of the package, and its subsystems: freezing, discovery, controller, cache) is what a training loop
needs and imports nothing of the rest, as the package docstring says; within it each subsystem imports only what
lies below it (``CORE``). The package's ``__init__`` (the facade a user imports) also offers ``accel``'s per-layer
compile.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "freezeout"

# What each part may import, besides itself. The core is what a training loop needs: the modules at the top of the
# package (the base every part uses) and its subsystems, each a package. The CLI may import everything; nothing
# imports the CLI.
CORE = {
    "base": {"base"},
    "freezing": {"base", "freezing"},  # what a freeze does to the user's modules, its folds included
    "discovery": {"base", "freezing", "discovery"},  # find_layers (it probes a model in eval mode: freezing.mode)
    "controller": {"base", "freezing", "controller"},  # FreezeOut
    "cache": {"base", "freezing", "controller", "cache"},  # PrefixCache, over a FreezeOut's frozen layers
}
ALLOWED = {
    "facade": {"core", "accel"},
    "core": {"core"},
    "accel": {"core", "accel"},
    "analysis": {"facade", "core", "accel", "analysis"},
    "integrations": {"facade", "core", "accel", "analysis", "integrations"},
    "experiment": {"facade", "core", "accel", "analysis", "experiment"},
    "cli": {"facade", "core", "accel", "analysis", "integrations", "experiment", "cli"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def part(module: str) -> str:
    pieces = module.split(".")
    if len(pieces) > 1 and pieces[1] in ALLOWED:
        return pieces[1]
    if module == "freezeout":
        return "facade"
    return "main" if module == "freezeout.__main__" else "core"


def imports(module: str) -> set[str]:
    """The freezeout modules ``module`` imports (a package's ``__init__`` when a name comes from it)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # `from . import engine` imports the module freezeout.x.engine
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: imports(m) for m in MODULES}


def test_the_walk_sees_the_whole_package():
    assert {"freezeout", "freezeout.controller", "freezeout.experiment.trainer", "freezeout.cli"} <= set(MODULES)
    assert "freezeout.experiment.engine" in GRAPH["freezeout.experiment.trainer"]  # `from . import engine`
    assert "freezeout.analysis.timing" in GRAPH["freezeout.analysis.estimate"]
    assert "freezeout.experiment.trainer" in GRAPH["freezeout.experiment.sweep"]  # imported inside a function
    assert part("freezeout.freezing.cut") == part("freezeout.controller") == "core"
    assert core_part("freezeout.freezing.folding.pairs") == "freezing" and core_part("freezeout.layers") == "base"


def test_the_package_docstring_says_what_the_graph_shows():
    import freezeout

    assert "imports nothing of the rest" in freezeout.__doc__
    core = [m for m in GRAPH if part(m) == "core"]
    assert core and all(part(n) == "core" for m in core for n in GRAPH[m])


def core_part(module: str) -> str:
    """The core's subsystem of a core module: its package, or ``base`` for a module at the top of the package."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 2 or (len(pieces) == 2 and pieces[1] in CORE) else "base"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if part(m) == "core"))
def test_the_cores_subsystems_import_only_what_lies_below_them(module):
    allowed = CORE[core_part(module)]
    wrong = sorted(m for m in GRAPH[module] if part(m) == "core" and core_part(m) not in allowed)
    assert not wrong, f"{module} ({core_part(module)}) imports {wrong}"


def test_the_top_of_the_package_holds_at_most_ten_modules():
    top = [m for m, p in MODULES.items() if p.parent == ROOT]
    assert len(top) <= 10, sorted(top)
    assert set(CORE) - {"base"} <= {m.split(".")[1] for m in MODULES if m.count(".") >= 1}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_part_imports_only_what_lies_below_it(module):
    if part(module) == "main":
        return
    allowed = ALLOWED[part(module)]
    wrong = sorted(m for m in GRAPH[module] if part(m) not in allowed)
    assert not wrong, f"{module} ({part(module)}) imports {wrong}"


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                cycle = [*path[path.index(n) :], n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])


def test_the_checks_see_a_violation(monkeypatch):
    # The walk must catch a core module that imports the experiment, and a cycle.
    fake = {**GRAPH, "freezeout.schedule": {"freezeout.experiment.trainer"}}
    bad = [m for m in fake["freezeout.schedule"] if part(m) not in ALLOWED["core"]]
    assert bad == ["freezeout.experiment.trainer"]
    monkeypatch.setitem(GRAPH, "freezeout.checks", {"freezeout.schedule"})  # schedule imports checks
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycles()
    # and a subsystem of the core that reaches up: freezing into the cache, the base into freezing
    monkeypatch.setitem(GRAPH, "freezeout.freezing.cut", {"freezeout.cache.cache"})
    with pytest.raises(AssertionError, match=r"freezing\) imports \['freezeout.cache.cache'\]"):
        test_the_cores_subsystems_import_only_what_lies_below_them("freezeout.freezing.cut")
    monkeypatch.setitem(GRAPH, "freezeout.layers", {"freezeout.freezing.mode"})
    with pytest.raises(AssertionError, match=r"\(base\) imports"):
        test_the_cores_subsystems_import_only_what_lies_below_them("freezeout.layers")


def exported_imports(source: str) -> list[str]:
    """The names in a module's ``__all__`` that it imports from another freezeout module instead of defining."""
    tree = ast.parse(source)
    imported = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) and n.level for a in n.names}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return sorted(set(ast.literal_eval(node.value)) & imported)
    return []


def test_helpers_are_exported_only_where_they_live():
    # a package's __init__ is its facade; any other module's __all__ lists what it defines
    sources = {m: p.read_text() for m, p in MODULES.items() if p.name != "__init__.py"}
    wrong = {m: names for m, text in sources.items() if (names := exported_imports(text))}
    assert not wrong, f"re-exported through __all__: {wrong}"
    seeded = (ROOT / "accel" / "fold.py").read_text().replace('__all__ = ["', '__all__ = ["find_fold", "')
    assert exported_imports(seeded) == ["find_fold"]  # the check sees one


MAX_FUNCTION_LINES = 60  # a function fits on a screen, its docstring included


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """Each function (or method) of ``source`` longer than ``limit`` lines, from ``def`` to its last line."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                found.append((node.name, lines))
    return found


def test_every_function_fits_on_a_screen():
    wrong = {m: found for m, p in MODULES.items() if (found := long_functions(p.read_text()))}
    assert not wrong, f"functions over {MAX_FUNCTION_LINES} lines: {wrong}"
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"def f():\n{body}\n") == [("f", MAX_FUNCTION_LINES + 1)]  # the check sees one
