"""The package's layering, read from the source with ast: imports only go down, and no two modules
import each other, directly or around a loop; and no two modules share a name.

LAYERS lists the packages (a subpackage, or a top-level module) from the bottom up. A package may
import any package of a lower layer, never one of its own layer or above: the packages of one
layer are independent of each other. Every import counts, including those inside a function and
under `if TYPE_CHECKING:`: a lazy import is still a dependency. docs/design.md §1 draws the same
picture.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "decision_retry"

LAYERS = (
    # the vocabulary: imports nothing of ours (the package root holds __version__)
    ("decision_retry", "errors", "tokens", "sampling", "choices", "costs", "prompts", "hermes"),
    # contracts and records: the engine protocols, the trace store, the model catalogue,
    # and the repository's safety and test runs (which know nothing of models)
    ("protocols", "trace", "catalogue", "repo"),
    # one module per engine; OpenTelemetry export of a trace; fault localisation (runs tests)
    ("engines", "otel", "localise", "model_install"),
    ("lm",),  # the decode loop: any Backend becomes an Engine
    ("samplers", "testing"),  # the MH chain and its moves; the scripted and toy models
    ("loading", "retry"),  # which engine a name means; retry.py: the chain's old import path
    ("agent", "langgraph"),  # the `fix` agent loop; the LangGraph nodes
    ("langchain", "bench"),  # the LangChain middleware (over langgraph's state); benchmarks
    ("cli",),
)


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: the modules of the same package it imports}, for every .py under `root`.

    `from pkg import name` is an edge to `pkg.name` when that is a module, else to `pkg`."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    top = root.name

    def known(name: str) -> str:  # the longest prefix of `name` that is one of our modules
        while name not in files and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        here = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {known(a.name) for a in node.names if a.name.split(".")[0] == top}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolved against this module's package
                    base = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
                    src = f"{base}.{node.module}" if node.module else base
                else:
                    src = node.module or ""
                if src.split(".")[0] != top:
                    continue
                edges |= {f"{src}.{a.name}" if f"{src}.{a.name}" in files else known(src)
                          for a in node.names}
        graph[mod] = edges - {mod}
    return graph


def package(module: str) -> str:
    """`decision_retry.agent.graph` -> agent; `decision_retry.lm` -> lm; the root -> its name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward(graph: dict[str, set[str]], layers) -> list[str]:
    """Each import of another package of the importer's own layer or above, as `a -> b (layers)`."""
    layer = {p: i for i, names in enumerate(layers) for p in names}
    bad = []
    for a, targets in sorted(graph.items()):
        for b in sorted(targets):
            pa, pb = package(a), package(b)
            if pa != pb and layer[pb] >= layer[pa]:
                bad.append(f"{a} -> {b} (layer {layer[pa]} imports layer {layer[pb]})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# -- the package ------------------------------------------------------------------------------


def test_every_package_has_a_layer():
    placed = [p for names in LAYERS for p in names]
    assert len(placed) == len(set(placed)), "a package is in two layers"
    packages = {package(m) for m in import_graph(ROOT)}
    assert packages - set(placed) == set(), "a new package: add it to LAYERS"
    assert set(placed) - packages == set(), "LAYERS names a package that no longer exists"


def test_imports_only_go_down():
    assert upward(import_graph(ROOT), LAYERS) == []


def test_no_import_cycles():
    assert cycles(import_graph(ROOT)) == []


# Module names that may repeat: the CLI's modules are named after their commands (`cli/models.py`
# is `decision-retry models`), and each in-process or remote engine package has its `engine.py`.
SHARED_NAMES = {
    "cli/models.py": "trace/models.py",
    "engines/remote/engine.py": "engines/llamacpp/engine.py",
}


def collisions(root: Path) -> list[tuple[str, ...]]:
    """The groups of modules (not `__init__`/`__main__`) that share a file name, as paths."""
    by_name: dict[str, list[str]] = {}
    for p in sorted(root.rglob("*.py")):
        if p.name not in ("__init__.py", "__main__.py"):
            by_name.setdefault(p.name, []).append(p.relative_to(root).as_posix())
    return [tuple(paths) for paths in by_name.values() if len(paths) > 1]


def test_no_two_modules_share_a_name():
    allowed = {frozenset(pair) for pair in SHARED_NAMES.items()}
    assert [c for c in collisions(ROOT) if frozenset(c) not in allowed] == []


# -- the checks themselves, on a small package written for the test ---------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_graph_resolves_submodules_relative_and_lazy_imports(tmp_path):
    pkg = _write(tmp_path / "pkg", {
        "__init__.py": "",
        "low.py": "X = 1\n",
        "mid/__init__.py": "from pkg.low import X\n",
        "mid/a.py": "from . import b\nfrom ..low import X\n",
        "mid/b.py": "def f():\n    import pkg.low\n",
        "high.py": "from pkg.mid import a\nfrom pkg import mid\nimport os\n",
    })
    graph = import_graph(pkg)
    assert graph["pkg.mid.a"] == {"pkg.mid.b", "pkg.low"}
    assert graph["pkg.mid.b"] == {"pkg.low"}
    assert graph["pkg.mid"] == {"pkg.low"}
    assert graph["pkg.high"] == {"pkg.mid.a", "pkg.mid"}


def test_an_upward_import_and_a_cycle_are_reported(tmp_path):
    pkg = _write(tmp_path / "pkg", {
        "__init__.py": "",
        "low.py": "def f():\n    from pkg.high import g\n",  # lazy, still upward
        "high.py": "from pkg.low import f\n",
        "side.py": "from pkg import low\n",  # same layer as low: not independent
    })
    graph = import_graph(pkg)
    layers = (("pkg", "low", "side"), ("high",))
    assert upward(graph, layers) == [
        "pkg.low -> pkg.high (layer 0 imports layer 1)",
        "pkg.side -> pkg.low (layer 0 imports layer 0)",
    ]
    assert cycles(graph) == [["pkg.high", "pkg.low"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_a_shared_module_name_is_reported(tmp_path):
    pkg = _write(tmp_path / "pkg", {"__init__.py": "", "a/__init__.py": "", "a/report.py": "",
                                    "b/report.py": "", "b/__init__.py": "", "c.py": ""})
    assert collisions(pkg) == [("a/report.py", "b/report.py")]
