"""Imports follow the data: sip -> rtp -> ingest -> audio -> inference -> transcript -> sinks -> workorders -> app.

A stage may import itself and the stages before it, never a later stage: the low layers stay
free of Kafka, HTTP and model knowledge, and each is usable and testable on its own. `app` (the
daemon as composition root, config, HTTP, metrics, logs) wires the stages; `devtools` (SIPp
runner, embedded broker, demo, scoring) may use the product but the product never uses it; `cli`
at the top is the only entry point. `common` is not a stage of the data but helpers beneath all of
them (throttled logging), and `errors` (OperatorError) may be raised by any stage. Within a
stage, modules import each other without cycles.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "asr_stream"
STAGES = ["common", "sip", "rtp", "ingest", "audio", "inference", "transcript", "sinks", "workorders", "app", "devtools"]
TOP = len(STAGES)  # cli.py
FOUNDATION = {"errors"}


def _rank(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "asr_stream" or len(parts) == 1 or parts[1] in FOUNDATION:
        return -1  # outside the package, the package root (version only), or what every stage may raise
    return STAGES.index(parts[1]) if parts[1] in STAGES else TOP


def _module_name(path: Path) -> str:
    return "asr_stream." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


# Every import statement of every module, read by `ast` in a fresh interpreter: CPython 3.11.7's
# ast.parse raises SystemError ("AST constructor recursion depth mismatch", gh-106905, fixed in
# 3.11.8) once something else in the process (Hypothesis's lambda reflection) has left its depth
# counter off, which made this test fail depending on which tests ran before it.
_SCAN = """
import ast, json, sys
result = {}
for path in sys.argv[1:]:
    statements = []
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), filename=path)):
        if isinstance(node, ast.Import):
            statements += [[alias.name, None] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            statements.append([node.module, [alias.name for alias in node.names]])
    result[path] = statements
print(json.dumps(result))
"""


@functools.cache
def _statements() -> dict[Path, list[tuple[str, list[str] | None]]]:
    """path -> [(module, None) for `import module`, (module, [names]) for `from module import names`]."""
    paths = sorted(PACKAGE.rglob("*.py"))
    scanned = subprocess.run([sys.executable, "-c", _SCAN, *map(str, paths)], capture_output=True, text=True, check=True, timeout=120)
    return {Path(path): [(module, names) for module, names in statements] for path, statements in json.loads(scanned.stdout).items()}


def _imports(path: Path) -> list[str]:
    return [module for module, _ in _statements()[path]]


def test_no_stage_imports_a_later_stage():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        own = _rank(module.removesuffix(".__init__"))
        for imported in _imports(path):
            if _rank(imported) > own:
                violations.append(f"{module} imports {imported}")
    assert not violations, "\n".join(violations)


def test_serving_path_does_not_need_torch():
    """torch is for exporting graphs (and the optional GPU backend), never for CPU serving."""
    allowed = {"export.py", "onnx_export.py", "model.py", "torch_backend.py"}
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name not in allowed and any(name.split(".")[0] == "torch" for name in _imports(path))
    ]
    assert not offenders, offenders


def _import_graph() -> dict[str, set[str]]:
    """Each asr_stream module -> the asr_stream modules it imports, wherever the import statement sits.

    Function-local imports count too: deferring an import to call time hides a cycle, it does not
    remove it (engine_cache and tensorrt_backend once imported each other that way). A lazy import
    stays fine for an optional heavy dependency (torch, TensorRT), as long as no cycle closes.
    `from package import name` counts as importing the submodule when `name` is one.
    """
    paths = {_module_name(path).removesuffix(".__init__"): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        edges = graph.setdefault(module, set())
        for imported, names in _statements()[path]:
            if names is None:
                edges.update({imported} & paths.keys())
                continue
            for name in names:
                submodule = f"{imported}.{name}"
                target = submodule if submodule in paths else imported
                if target in paths:
                    edges.add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, or a module importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph[module]):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1 or module in graph[module]:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles():
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(cycle) for cycle in cycles)


def test_cycle_finder_finds_a_hidden_cycle():
    """The check itself: a cycle closed by a function-local import, as engine_cache <-> tensorrt_backend was."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _cycles(graph) == [["a", "b", "c"], ["e"]]
