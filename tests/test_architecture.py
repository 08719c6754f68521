"""The package structure: no import cycle among the project's modules (function-level imports
included: a lazy import that closes a cycle is still a cycle a reader must untangle)."""

import ast
from pathlib import Path

from tools.bento import imported

ROOT = Path(__file__).parents[1]
PACKAGES = {
    "spinecast.datasets": "datasets",
    "spinecast.training": "training",
    "spinecast.serving": "serving",
    "spinecast": "spinecast",
}


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [
                p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"
            ]
            out[".".join([package, *parts])] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports, anywhere in its body (the Bento's staging reads the
    imports the same way)."""
    return {t for t in imported(path, name) if t in modules and t != name}


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # A package's __init__ re-exporting its modules is not a cycle of the modules themselves.
    graph = {
        name: {
            t
            for t in deps
            if not (t == name.rsplit(".", 1)[0] and modules[t].name == "__init__.py")
        }
        for name, deps in graph.items()
    }
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 50
REASON = "# size: "  # the one-line reason that lets a file or a function be longer


def test_files_and_functions_stay_small_or_say_why():
    too_long = []
    for path in _modules().values():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_FILE_LINES and not lines[0].startswith(REASON):
            too_long.append(f"{path.relative_to(ROOT)}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            size = node.end_lineno - first + 1
            if size > MAX_FUNCTION_LINES and not lines[first - 2].strip().startswith(REASON):
                too_long.append(f"{path.relative_to(ROOT)}: {node.name}() {size} lines")
    assert not too_long, "over the limits, with no `# size:` reason: " + "; ".join(too_long)
