"""Small randomly initialised SenseVoice- and Paraformer-shaped models, exported as FunASR exports the real ones.

No SenseVoice or Paraformer weights are within reach of this project's machines (docs/mandarin.md),
so the importer, runner, daemon and TensorRT builds are exercised on graphs made here. What is the
same as a real `AutoModel(model=...).export(type="onnx")`: the input and output names, dtypes,
ranks and dynamic axes (funasr/models/sense_voice/export_meta.py, funasr/models/paraformer/
export_meta.py), SenseVoice's four query frames taken from an embedding table indexed by the
`language` and `textnorm` inputs, Paraformer's token count from integrated per-frame weights
(CIF), and the export directory's files (model.onnx, optionally model_quant.onnx with
int8 MatMuls as FunASR's `quantize=True` writes it, tokens.json, am.mvn, config.yaml). What is
not: the encoders are the project's small Conformer layers (not SAN-M), the text is meaningless,
and Paraformer's logits have one position per LFR frame (a real export has max(token_num)
positions; runners read only the first token_num either way).

Export-time code (imports torch); serving never imports it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from asr_stream.inference.conformer.model import ConformerConfig, ConformerLayer, relative_positions, time_mask
from asr_stream.inference.funasr.manifest import CMVN_FILE, CONFIG_FILE, GRAPH_FILE, INPUTS, OUTPUTS, SENSEVOICE, TOKENS_FILE
from asr_stream.inference.onnx_export import export_graph

# FunASR's SenseVoice embedding table: 7 rows of its own, then the language and text-norm rows.
SENSEVOICE_QUERY_ROWS = 16
# The tags SenseVoice's vocabulary holds (and emits on its query frames).
SENSEVOICE_TAGS = (
    *("<|zh|>", "<|en|>", "<|yue|>", "<|ja|>", "<|ko|>", "<|nospeech|>"),
    *("<|HAPPY|>", "<|SAD|>", "<|ANGRY|>", "<|NEUTRAL|>", "<|FEARFUL|>", "<|DISGUSTED|>", "<|SURPRISED|>", "<|EMO_UNKNOWN|>"),
    *("<|Speech|>", "<|BGM|>", "<|Applause|>", "<|Laughter|>", "<|Cry|>", "<|Sneeze|>", "<|Breath|>", "<|Cough|>", "<|Event_UNK|>"),
    *("<|withitn|>", "<|woitn|>"),
)
# A CIF weight per frame in (0, 0.4): about 2 to 3 tokens per second of 60 ms frames, and fewer tokens than frames.
_ALPHA_SCALE = 0.4
_EXAMPLE_BATCH, _EXAMPLE_FRAMES = 2, 37  # >= 2, so torch.export keeps the dims symbolic
FEATURE_DIM = 560  # 80 mels x LFR 7, as every published SenseVoice and Paraformer


@dataclass(frozen=True)
class TinyConfig:
    vocab_size: int
    feature_dim: int = FEATURE_DIM
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2

    def conformer(self) -> ConformerConfig:
        return ConformerConfig(
            vocab_size=self.vocab_size, d_model=self.d_model, n_heads=self.n_heads, n_layers=self.n_layers, conv_kernel=15
        )


class _Encoder(nn.Module):
    """[B, T, feature_dim] + lengths -> [B, T, d_model]: a projection and Conformer layers, padding masked."""

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.d_model = config.d_model
        self.project = nn.Linear(config.feature_dim, config.d_model)
        self.layers = nn.ModuleList(ConformerLayer(config.conformer()) for _ in range(config.n_layers))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.project(x)
        positions = relative_positions(x.shape[1], self.d_model, x.device)
        valid = time_mask(lengths, x.shape[1])
        for layer in self.layers:
            x = layer(x, positions, valid)
        return x


class TinySenseVoice(nn.Module):
    """speech, speech_lengths, language, textnorm -> ctc_logits [B, T + 4, V], encoder_out_lens [B] int32."""

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(SENSEVOICE_QUERY_ROWS, config.feature_dim)
        self.encoder = _Encoder(config)
        self.ctc_lo = nn.Linear(config.d_model, config.vocab_size)

    def forward(self, speech: torch.Tensor, speech_lengths: torch.Tensor, language: torch.Tensor, textnorm: torch.Tensor):
        batch = speech.shape[0]
        language_query = self.embed(language.long())[:, None]
        textnorm_query = self.embed(textnorm.long())[:, None]
        event_emotion_query = self.embed(torch.arange(1, 3, device=speech.device))[None].expand(batch, -1, -1)
        x = torch.cat([language_query, event_emotion_query, textnorm_query, speech], dim=1)
        lengths = speech_lengths.long() + 4
        return self.ctc_lo(self.encoder(x, lengths)), lengths.to(torch.int32)


class TinyParaformer(nn.Module):
    """speech, speech_lengths -> logits [B, T, V] (log-probs), token_num [B] int32 (CIF: floor of the summed weights)."""

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.encoder = _Encoder(config)
        self.alpha = nn.Linear(config.d_model, 1)
        self.decoder = nn.ModuleList(ConformerLayer(config.conformer()) for _ in range(config.n_layers))
        self.output = nn.Linear(config.d_model, config.vocab_size)
        self.d_model = config.d_model

    def forward(self, speech: torch.Tensor, speech_lengths: torch.Tensor):
        lengths = speech_lengths.long()
        hidden = self.encoder(speech, lengths)
        frames = hidden.shape[1]
        alphas = torch.sigmoid(self.alpha(hidden)).squeeze(-1) * _ALPHA_SCALE * time_mask(lengths, frames).to(hidden.dtype)
        token_num = torch.floor(alphas.sum(dim=1)).to(torch.int64)
        # Continuous integrate-and-fire: token n takes the part of each frame's weight that falls in [n, n + 1).
        fired = torch.cumsum(alphas, dim=1)[:, None, :]
        before = fired - alphas[:, None, :]
        n = torch.arange(frames, device=speech.device).to(hidden.dtype)[None, :, None]
        weights = torch.clamp(torch.minimum(fired, n + 1) - torch.maximum(before, n), min=0.0)
        x = torch.matmul(weights, hidden)
        positions = relative_positions(frames, self.d_model, x.device)
        valid = time_mask(token_num, frames)
        for layer in self.decoder:
            x = layer(x, positions, valid)
        return torch.log_softmax(self.output(x), dim=-1), token_num.to(torch.int32)


def export_onnx(model: nn.Module, family: str, path: Path) -> Path:
    """Write `model` (eval mode) as one ONNX file with FunASR's input/output names and dynamic batch and time."""
    model.eval()
    speech = torch.randn(_EXAMPLE_BATCH, _EXAMPLE_FRAMES, FEATURE_DIM)
    lengths = torch.tensor([_EXAMPLE_FRAMES, _EXAMPLE_FRAMES - 9], dtype=torch.int32)
    batch, frames = torch.export.Dim("batch_size", min=1, max=1024), torch.export.Dim("feats_length", min=1, max=100_000)
    inputs: tuple[torch.Tensor, ...] = (speech, lengths)
    dynamic: dict[str, dict[int, torch.export.Dim]] = {"speech": {0: batch, 1: frames}, "speech_lengths": {0: batch}}
    if family == SENSEVOICE:
        inputs += (torch.tensor([0, 3], dtype=torch.int32), torch.tensor([15, 14], dtype=torch.int32))
        dynamic |= {"language": {0: batch}, "textnorm": {0: batch}}
    return export_graph(model, inputs, path, input_names=INPUTS[family], output_names=OUTPUTS[family], dynamic_shapes=dynamic)


def sensevoice_vocabulary(texts: Iterable[str]) -> list[str]:
    """A SentencePiece-style vocabulary: <unk> (the blank) first, SenseVoice's tags, then word-initial and inner pieces."""
    characters = sorted({character for text in texts for character in text if not character.isspace()})
    return ["<unk>", "<s>", "</s>", *SENSEVOICE_TAGS, *characters, *(f"\u2581{character}" for character in characters)]


def paraformer_vocabulary(texts: Iterable[str]) -> list[str]:
    """A CharTokenizer vocabulary as FunASR's Chinese Paraformer ships it: <blank>, <s>, </s>, characters, <unk> last."""
    characters = sorted({character for text in texts for character in text if not character.isspace()})
    return ["<blank>", "<s>", "</s>", *characters, "<unk>"]


def _am_mvn(dim: int) -> str:
    """Plausible CMVN for int16-scale log-mel energies (mean about 10, deviation about 3), in FunASR's am.mvn layout."""
    shift = " ".join(["-10.0"] * dim)
    scale = " ".join(["0.3"] * dim)
    return f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {shift} ]\n<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {scale} ]\n</Nnet>\n"


def _config(family: str) -> dict:
    """The parts of FunASR's config.yaml the runtimes read: the model class, the front end, the predictor bias."""
    frontend = {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10, "lfr_m": 7, "lfr_n": 6}
    if family == SENSEVOICE:
        return {"model": "SenseVoiceSmall", "frontend": "WavFrontend", "frontend_conf": frontend}
    return {"model": "Paraformer", "model_conf": {"predictor_bias": 1}, "frontend": "WavFrontend", "frontend_conf": frontend}


def build_model(family: str, vocab_size: int, seed: int = 0) -> TinySenseVoice | TinyParaformer:
    """The random model `write_export_dir` exports (the same weights for the same seed), in eval mode."""
    torch.manual_seed(seed)
    model = (TinySenseVoice if family == SENSEVOICE else TinyParaformer)(TinyConfig(vocab_size=vocab_size))
    return model.eval()


def write_export_dir(directory: Path, family: str, texts: Iterable[str], seed: int = 0, quantize: bool = False) -> Path:
    """A FunASR ONNX export directory of a random `family` model whose vocabulary covers `texts`."""
    directory.mkdir(parents=True, exist_ok=True)
    pieces = (sensevoice_vocabulary if family == SENSEVOICE else paraformer_vocabulary)(list(texts))
    model = build_model(family, len(pieces), seed)
    graph = export_onnx(model, family, directory / GRAPH_FILE)
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # As FunASR's export(quantize=True): int8 weights for the MatMuls only, per channel, QUInt8.
        quantize_dynamic(
            graph, directory / "model_quant.onnx", op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QUInt8
        )
    (directory / TOKENS_FILE).write_text(json.dumps(pieces, ensure_ascii=False))
    (directory / CMVN_FILE).write_text(_am_mvn(FEATURE_DIM))
    (directory / CONFIG_FILE).write_text(yaml.safe_dump(_config(family), allow_unicode=True))
    return directory
