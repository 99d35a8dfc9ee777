"""engines/<name>/manifest.json of a Conformer-CTC model: what the runner needs besides the files.

Laid out like the Whisper manifest (`format`, `graphs` and `tokenizer` entries with sha256s) plus
`family`, so `models` commands can list both; the digests tell which exact graph and tokenizer a
deployment serves.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from asr_stream.audio.features_nemo import NemoMelSettings
from asr_stream.inference.models import MANIFEST, MANIFEST_FORMAT, ModelError

FAMILY = "conformer-ctc"
GRAPH = "model"  # the single graph's key in `graphs`
GRAPH_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.model"
PREPROCESSOR_FILE = "preprocessor.yaml"
# The graph's signature, as NeMo's `model.export()` writes it for CTC models.
FEATURES_INPUT = "audio_signal"  # [B, n_mels, T] float32
LENGTH_INPUT = "length"  # [B] int64, valid feature frames
LOG_PROBS_OUTPUT = "logprobs"  # [B, T', vocab_size + 1], blank last


@dataclass(frozen=True)
class ConformerManifest:
    name: str
    features: NemoMelSettings
    subsampling_factor: int  # one model frame spans subsampling_factor feature hops
    vocab_size: int  # SentencePiece pieces; the CTC blank is id vocab_size
    sha256: dict[str, str]  # file name in the engine directory -> digest
    language: str | None = None  # what the operator declared at import; NeMo configs do not say

    @property
    def frame_ms(self) -> float:
        """Duration of one output frame of the model."""
        return self.subsampling_factor * self.features.hop_length * 1000 / self.features.sample_rate

    def write(self, engine_dir: Path) -> Path:
        entry = {file: {"file": file, "sha256": self.sha256[file]} for file in (GRAPH_FILE, TOKENIZER_FILE, PREPROCESSOR_FILE)}
        document = {
            "format": MANIFEST_FORMAT,
            "family": FAMILY,
            "name": self.name,
            "graphs": {GRAPH: entry[GRAPH_FILE]},
            "tokenizer": entry[TOKENIZER_FILE],
            "preprocessor": entry[PREPROCESSOR_FILE],
            "features": asdict(self.features),
            "subsampling_factor": self.subsampling_factor,
            "vocab_size": self.vocab_size,
            "language": self.language,
        }
        path = engine_dir / MANIFEST
        path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, engine_dir: Path) -> ConformerManifest:
        try:
            document = json.loads((engine_dir / MANIFEST).read_text())
        except (OSError, ValueError):
            raise ModelError(f"{engine_dir} holds no readable {MANIFEST}: add the model with `asr-stream models add conformer`") from None
        if document.get("family") != FAMILY or document.get("format") != MANIFEST_FORMAT:
            raise ModelError(f"{engine_dir} does not hold a {FAMILY} model of manifest format {MANIFEST_FORMAT}")
        entries = [document["graphs"][GRAPH], document["tokenizer"], document["preprocessor"]]
        return cls(
            name=document["name"],
            features=NemoMelSettings(**document["features"]),
            subsampling_factor=document["subsampling_factor"],
            vocab_size=document["vocab_size"],
            sha256={entry["file"]: entry["sha256"] for entry in entries},
            language=document["language"],
        )
