"""engines/<name>/manifest.json of an imported FunASR model (SenseVoice or Paraformer).

Laid out like the other families' manifests (`format`, `family`, `graphs` with sha256s) plus what
the runner needs that the files do not say in one place: the front-end settings read from
config.yaml, the language, SenseVoice's text-normalisation choice, Paraformer's predictor bias.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from asr_stream.audio.features_kaldi import KaldiFbankSettings
from asr_stream.inference.models import MANIFEST, MANIFEST_FORMAT, ModelError

SENSEVOICE = "sensevoice"
PARAFORMER = "paraformer"
FAMILIES = (SENSEVOICE, PARAFORMER)

GRAPH = "model"  # the single graph's key in `graphs`
GRAPH_FILE = "model.onnx"
TOKENS_FILE = "tokens.json"
CMVN_FILE = "am.mvn"
CONFIG_FILE = "config.yaml"
BPE_FILE = "bpe.model"  # SenseVoice's SentencePiece model, when the export directory has one (spells hotwords)

# The graphs' signatures, as FunASR's `AutoModel(...).export(type="onnx")` writes them
# (funasr/models/sense_voice/export_meta.py, funasr/models/paraformer/export_meta.py).
SPEECH = "speech"  # [B, T, n_mels * lfr_m] float32, LFR frames after CMVN
SPEECH_LENGTHS = "speech_lengths"  # [B] int32, valid LFR frames
LANGUAGE = "language"  # [B] int32, SenseVoice only: a row of its query embedding
TEXTNORM = "textnorm"  # [B] int32, SenseVoice only: with or without inverse text normalisation
INPUTS = {SENSEVOICE: (SPEECH, SPEECH_LENGTHS, LANGUAGE, TEXTNORM), PARAFORMER: (SPEECH, SPEECH_LENGTHS)}
OUTPUTS = {SENSEVOICE: ("ctc_logits", "encoder_out_lens"), PARAFORMER: ("logits", "token_num")}
TEXT_NORMS = ("woitn", "withitn")


@dataclass(frozen=True)
class FunasrManifest:
    family: str  # SENSEVOICE or PARAFORMER
    name: str
    features: KaldiFbankSettings
    vocab_size: int
    sha256: dict[str, str]  # file name in the engine directory -> digest
    source_graph: str  # the export's file name: model.onnx, or model_quant.onnx (int8 MatMuls)
    language: str | None = None  # SenseVoice: fixed language (None: its own detection); Paraformer: what it speaks
    text_norm: str = "woitn"  # SenseVoice: "withitn" adds punctuation and writes numbers as digits
    predictor_bias: int = 0  # Paraformer: CIF positions past the text (the end-of-sentence token)

    @property
    def quantized(self) -> bool:
        return self.source_graph != GRAPH_FILE

    def write(self, engine_dir: Path) -> Path:
        document = {
            "format": MANIFEST_FORMAT,
            "family": self.family,
            "name": self.name,
            "graphs": {GRAPH: {"file": GRAPH_FILE, "sha256": self.sha256[GRAPH_FILE]}},
            "files": {file: {"file": file, "sha256": digest} for file, digest in sorted(self.sha256.items()) if file != GRAPH_FILE},
            "features": asdict(self.features),
            "vocab_size": self.vocab_size,
            "source_graph": self.source_graph,
            "language": self.language,
            "text_norm": self.text_norm,
            "predictor_bias": self.predictor_bias,
        }
        path = engine_dir / MANIFEST
        path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, engine_dir: Path) -> FunasrManifest:
        try:
            document = json.loads((engine_dir / MANIFEST).read_text())
        except (OSError, ValueError):
            raise ModelError(
                f"{engine_dir} holds no readable {MANIFEST}: add the model with `asr-stream models add sensevoice|paraformer`"
            ) from None
        if document.get("family") not in FAMILIES or document.get("format") != MANIFEST_FORMAT:
            raise ModelError(f"{engine_dir} does not hold a SenseVoice or Paraformer model of manifest format {MANIFEST_FORMAT}")
        entries = [document["graphs"][GRAPH], *document["files"].values()]
        missing = [entry["file"] for entry in entries if not (engine_dir / entry["file"]).is_file()]
        if missing:
            raise ModelError(f"{engine_dir} lacks {', '.join(missing)}: add the model again")
        return cls(
            family=document["family"],
            name=document["name"],
            features=KaldiFbankSettings(**document["features"]),
            vocab_size=document["vocab_size"],
            sha256={entry["file"]: entry["sha256"] for entry in entries},
            source_graph=document["source_graph"],
            language=document["language"],
            text_norm=document["text_norm"],
            predictor_bias=document["predictor_bias"],
        )
