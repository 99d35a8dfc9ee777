"""engines/<name>/manifest.json of a Conformer-CTC model: what the runner needs besides the files.

Written once by the importer, read by the runner; the sha256s let `models` commands and logs tell
which exact graph and tokenizer a deployment serves.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from asr_stream.audio.features_nemo import NemoMelSettings

MANIFEST_NAME = "manifest.json"
FAMILY = "conformer-ctc"
GRAPH_NAME = "model.onnx"
TOKENIZER_NAME = "tokenizer.model"
PREPROCESSOR_NAME = "preprocessor.yaml"


@dataclass(frozen=True)
class ConformerManifest:
    name: str
    features: NemoMelSettings
    subsampling_factor: int  # model frames are subsampling_factor feature hops long
    vocab_size: int  # SentencePiece pieces; the CTC blank is id vocab_size
    sha256: dict[str, str]  # file name in the engine directory -> digest

    @property
    def frame_ms(self) -> float:
        """Duration of one output frame of the model."""
        return self.subsampling_factor * self.features.hop_length * 1000 / self.features.sample_rate

    def write(self, engine_dir: Path) -> Path:
        path = engine_dir / MANIFEST_NAME
        path.write_text(json.dumps({"family": FAMILY, **asdict(self)}, indent=2) + "\n")
        return path

    @classmethod
    def read(cls, engine_dir: Path) -> ConformerManifest:
        data = json.loads((engine_dir / MANIFEST_NAME).read_text())
        if data.pop("family") != FAMILY:
            raise ValueError(f"{engine_dir} does not hold a {FAMILY} model")
        return cls(**{**data, "features": NemoMelSettings(**data["features"])})
