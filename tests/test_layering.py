"""Imports follow the data: sip -> rtp -> ingest -> audio -> inference -> transcript -> sinks -> workorders -> app.

A stage may import itself and the stages before it, never a later stage: the low layers stay
free of Kafka, HTTP and model knowledge, and each is usable and testable on its own. `app` (the
daemon as composition root, config, HTTP, metrics, logs) wires the stages; `devtools` (SIPp
runner, embedded broker, demo, scoring) may use the product but the product never uses it; `cli`
at the top is the only entry point. `common` is not a stage of the data but helpers beneath all of
them (throttled logging), and `errors` (OperatorError) may be raised by any stage.
"""

from __future__ import annotations

import ast
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


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def test_no_stage_imports_a_later_stage():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = "asr_stream." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        own = _rank(module.removesuffix(".__init__"))
        for imported in _imports(path):
            if _rank(imported) > own:
                violations.append(f"{module} imports {imported}")
    assert not violations, "\n".join(violations)


def test_serving_path_does_not_need_torch():
    """torch is for exporting graphs (and the optional GPU backend), never for CPU serving."""
    allowed = {"export.py", "model.py", "torch_backend.py"}
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name not in allowed and any(name.split(".")[0] == "torch" for name in _imports(path))
    ]
    assert not offenders, offenders
