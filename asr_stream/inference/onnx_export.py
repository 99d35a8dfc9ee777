"""Export a PyTorch module to one ONNX file, the same way for every model family (export-time: imports torch).

Two things every export here needs and torch's exporter does not do by itself:
- quiet: the dynamo exporter logs and warns about things irrelevant here (torchvision ops,
  deprecations); an operator running `models prepare` / `models add` should see only real errors;
- reproducible: it records a Python stack trace in every node's metadata, with absolute source
  paths, so the same weights exported from two checkouts gave different graph bytes (and sha256s in
  the manifest). Those traces are dropped; the graph's computation is untouched.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

#: Node metadata that names files on the exporting machine.
_MACHINE_SPECIFIC_METADATA = ("pkg.torch.onnx.stack_trace",)


def export_graph(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_shapes: Mapping[str, Any],
    opset_version: int | None = None,
) -> Path:
    """Write `module` (called with `args`) to `path` as a single-file ONNX graph; returns `path`."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            dynamic_shapes=dict(dynamic_shapes),
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=opset_version,
            external_data=False,
            verbose=False,
        )
    assert program is not None, "the dynamo exporter returns an ONNXProgram (only the legacy one returns None)"
    for node in program.model.graph.all_nodes():
        for key in _MACHINE_SPECIFIC_METADATA:
            node.metadata_props.pop(key, None)
    program.save(str(path))
    return path
