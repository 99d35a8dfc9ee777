"""Export a ConformerCTC to ONNX with NeMo's signature (export-time code: imports torch).

Graph: inputs `audio_signal` [B, n_mels, T] float32 and `length` [B] int64, output `logprobs`
[B, T', V+1]; B and T dynamic, as `nemo ... model.export("model.onnx")` produces, so a graph
exported here and one exported by NeMo are served the same way.

`write_export_dir` makes what a NeMo user hands to `models add conformer` (graph, SentencePiece
tokenizer, `model_config.yaml`) from a small randomly initialised model: no Conformer-CTC weights
are in reach here, and the tests and the TensorRT build check need the real interface.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import sentencepiece
import torch
import yaml

from asr_stream.audio.features_nemo import NEMO_PREPROCESSOR
from asr_stream.inference.conformer.manifest import FEATURES_INPUT, LENGTH_INPUT, LOG_PROBS_OUTPUT
from asr_stream.inference.conformer.model import ConformerConfig, ConformerCTC
from asr_stream.inference.onnx_export import export_graph

# Example sizes for tracing: >= 2 so torch.export keeps the dims symbolic (it pins 0 and 1).
_EXAMPLE_BATCH, _EXAMPLE_FRAMES = 2, 203


def export_onnx(model: ConformerCTC, path: Path) -> Path:
    """Write `model` (put in eval mode) to `path` as a single-file ONNX graph with dynamic batch and time."""
    model.eval()
    n_mels = model.config.n_mels
    audio_signal = torch.randn(_EXAMPLE_BATCH, n_mels, _EXAMPLE_FRAMES)
    length = torch.tensor([_EXAMPLE_FRAMES, _EXAMPLE_FRAMES - 50], dtype=torch.int64)
    batch, frames = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("frames", min=1, max=100_000)
    return export_graph(
        model,
        (audio_signal, length),
        path,
        input_names=[FEATURES_INPUT, LENGTH_INPUT],
        output_names=[LOG_PROBS_OUTPUT],
        dynamic_shapes={"audio_signal": {0: batch, 2: frames}, "length": {0: batch}},  # keyed by forward()'s parameters
    )


def train_tokenizer(directory: Path, texts: Iterable[str], vocab_size: int) -> Path:
    """A SentencePiece unigram model of `vocab_size` pieces trained on `texts` (well under a second)."""
    prefix = directory / f"tokenizer{vocab_size}"
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        minloglevel=2,
    )
    return prefix.with_suffix(".model")


def write_export_dir(directory: Path, texts: Iterable[str], vocab_size: int, seed: int = 0) -> tuple[ConformerCTC, Path, Path, Path]:
    """(model, graph, tokenizer, model_config.yaml) of a random Conformer-CTC, as a NeMo user hands them over."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = ConformerCTC(ConformerConfig(vocab_size=vocab_size))
    graph = export_onnx(model, directory / "exported.onnx")
    preprocessor = directory / "model_config.yaml"
    preprocessor.write_text(yaml.safe_dump({"preprocessor": NEMO_PREPROCESSOR, "encoder": {"subsampling_factor": 4}}))
    return model, graph, train_tokenizer(directory, texts, vocab_size), preprocessor
