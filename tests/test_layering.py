"""Imports follow the data: (common) -> sip -> rtp -> audio -> inference -> transcript -> sinks -> wiring.

A stage may import itself and the stages before it, never a later stage and never the wiring
modules at the package's top level (daemon, offline, cli, config, ...). This keeps the low layers
free of Kafka, HTTP and model knowledge, and makes each usable and testable on its own.
`common` is not a stage of the data but helpers beneath all of them (e.g. throttled logging).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "asr_stream"
STAGES = ["common", "sip", "rtp", "audio", "inference", "transcript", "sinks"]
WIRING = len(STAGES)


def _rank(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "asr_stream" or len(parts) == 1:
        return -1  # outside the package, or the package root (version only)
    return STAGES.index(parts[1]) if parts[1] in STAGES else WIRING


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
        if own == WIRING:
            continue
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
