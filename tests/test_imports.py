"""The package's layout holds: no import circle in src/peftlab and no import from a lower
stage back up to a higher one, counting the imports inside functions too, and the
README's code map names every file where it is."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
SRC = ROOT / "src"

# Stages from the bottom up: each may import only its own stage and those before it.
# comparison/ and serving/ stand side by side: neither imports the other.
STAGES = {
    "core": 0,
    "data": 1,
    "models": 2,
    "training": 3,
    "methods": 4,
    "tasks": 5,
    "adapters": 6,
    "runner": 7,
    "comparison": 8,
    "serving": 8,
    "entry": 9,
}
CORE = {"config", "errors", "failure", "fsutil"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, modules: set[str]) -> set[str]:
    """The peftlab modules a file imports anywhere: `from peftlab import x` imports the
    submodule x when there is one, else the package itself."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module in modules:
            subs = {f"{node.module}.{a.name}" for a in node.names}
            found |= subs & modules
            if subs - modules:
                found.add(node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    modules = set(files)
    return {
        name: imported(ast.parse(path.read_text()), modules) - {name}
        for name, path in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports, as the list of modules around it, or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = "open"
        path.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[name] = "done"
        path.pop()
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def test_the_walk_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def stage_of(module: str) -> str:
    """peftlab.training.loop -> "training"; config, errors, ... -> "core"; the rest (cli,
    api, the package itself) -> "entry"."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in CORE:
        return "core"
    if len(parts) > 1 and parts[1] in STAGES:
        return parts[1]
    return "entry"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            mine, theirs = stage_of(module), stage_of(target)
            if STAGES[theirs] > STAGES[mine] or (STAGES[theirs] == STAGES[mine] and mine != theirs):
                found.append(f"{module} ({mine}) imports {target} ({theirs})")
    return found


def test_the_graph_holds_function_level_imports():
    graph = import_graph()
    assert "peftlab.runner.checks" in graph["peftlab.cli"]  # imported inside build_config
    assert "peftlab.config" in graph["peftlab.methods.registry"]


def test_no_import_circle():
    assert find_cycle(import_graph()) is None


def test_the_stage_check_finds_an_upward_import():
    assert stage_of("peftlab.training.loop") == "training"
    assert stage_of("peftlab.config") == "core" and stage_of("peftlab.cli") == "entry"
    graph = {"peftlab.models.loading": {"peftlab.runner.record"}, "peftlab.runner.record": set()}
    assert upward_imports(graph) == [
        "peftlab.models.loading (models) imports peftlab.runner.record (runner)"
    ]
    sideways = {"peftlab.comparison.child": {"peftlab.serving.engine"}}
    assert upward_imports({**sideways, "peftlab.serving.engine": set()})


def test_no_stage_imports_a_stage_above_it():
    assert upward_imports(import_graph()) == []


def test_every_stage_is_a_folder_with_its_docstring():
    for stage in set(STAGES) - {"core", "entry"}:
        init = SRC / "peftlab" / stage / "__init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} says what it holds"


def code_map() -> set[str]:
    """The files the README's code map names, as paths under src/peftlab."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```text\nsrc/peftlab/\n", 1)[1].split("```", 1)[0]
    named, folder = set(), ""
    for line in block.splitlines():
        first = line.split()[0] if line.split() else ""
        if line.startswith("  ") and not line.startswith("   "):  # a new entry
            folder = first if first.endswith("/") else ""
        named |= {folder + name for name in re.findall(r"\b\w+\.py\b", line)}
    return named


def test_the_readme_code_map_matches_the_tree():
    package = SRC / "peftlab"
    files = {
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.parent == package or p.name != "__init__.py"
    }
    assert code_map() == files


def test_the_api_functions_survive_importing_every_stage():
    """`peftlab.run` and `peftlab.compare` are the API's functions, whatever was imported:
    a stage package of either name would take their place once imported."""
    import importlib

    import peftlab

    for module in import_graph():
        if module != "peftlab.__main__":
            importlib.import_module(module)
    assert callable(peftlab.run) and callable(peftlab.compare)
