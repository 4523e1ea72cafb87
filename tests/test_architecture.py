"""tests.test_architecture: the house's shape, checked from the code's own imports: no import
cycle (function-level imports and the subpackage `__init__` a submodule import runs count), a
middleware that leans on few modules, no module too long to read, a request path that never
asks a store what it is, and a core that imports nothing of any server."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "admission"
MAX_MODULE_LINES = 600
MAX_MIDDLEWARE_IMPORTS = 15


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(name: str, path: Path) -> set[str]:
    """_imports is every admission module that importing `name` runs: its imports at any
    depth (functions included, `if TYPE_CHECKING:` blocks not), each with the subpackage
    `__init__`s its import runs. The root package's `__init__` is the public facade and is
    left out: it imports everything, by design, and nothing imports it for its own use."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if _type_checking(node):
            skipped.update(id(n) for n in ast.walk(node))
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets.add(node.module)
            targets.update(f"{node.module}.{a.name}" for a in node.names)
    out = set()
    for target in targets:
        parts = target.split(".")
        for i in range(2, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in MODULES and prefix != name and not name.startswith(prefix + "."):
                out.add(prefix)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items() if name != "admission"}


def _cycles() -> list[list[str]]:
    """_cycles is every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1 or node in GRAPH.get(node, ()):
                groups.append(sorted(group))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return groups


def test_no_module_imports_itself_back() -> None:
    assert _cycles() == []


def test_the_checker_finds_a_cycle_through_a_package_init() -> None:
    # The cycle the layout once hid: stores/__init__ imported the limiter, which imports
    # stores.memory, whose import runs stores/__init__.
    saved = dict(GRAPH)
    try:
        GRAPH["admission.stores"] = {*GRAPH["admission.stores"], "admission.ratelimit.limiter"}
        assert any("admission.stores" in group for group in _cycles())
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


def test_the_middleware_leans_on_few_modules() -> None:
    used = GRAPH["admission.middleware"]
    # Subpackage __init__s are run, not leaned on: count the modules named.
    named = {m for m in used if MODULES[m].name != "__init__.py" or m == "admission.stores"}
    assert len(named) <= MAX_MIDDLEWARE_IMPORTS, sorted(named)


def test_no_module_is_longer_than_a_reader_can_hold() -> None:
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_the_asgi_core_imports_nothing_of_a_server() -> None:
    for name, used in GRAPH.items():
        if name.startswith(("admission.server", "admission.bench", "admission.cli")):
            continue
        if name in ("admission.__main__", "admission.demo"):
            continue
        assert not {m for m in used if m.startswith("admission.server")}, name
        tree = ast.parse(MODULES[name].read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "uvicorn" for a in node.names), name
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] != "uvicorn", name


# What the request path runs: a store's kind is found out when things are built (`__init__`,
# the factories), never per request.
BUILDERS = {
    "__init__",
    "rate_gate",
    "open_store",
    "bucket_for",
    "__post_init__",
    "_limit_routes",
    "use_store",
}


def _asks_a_store_what_it_is(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        return False
    if node.func.id not in ("type", "isinstance", "getattr") or not node.args:
        return False
    return "store" in ast.unparse(node.args[0]).lower()


def test_the_request_path_never_asks_a_store_what_it_is() -> None:
    found = []
    for name, path in MODULES.items():
        # admission.testing inspects the stack between tests, off the request path.
        if name.startswith(("admission.bench", "admission.server", "admission.testing")):
            continue
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if fn.name in BUILDERS:
                continue
            for node in ast.walk(fn):
                if _asks_a_store_what_it_is(node):
                    found.append(f"{name}.{fn.name}: {ast.unparse(node)}")
    assert found == []
