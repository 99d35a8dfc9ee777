"""Export -> ONNX Runtime -> CTC, and the bring-your-own importer -> runner path, on real clips.

The model is small and randomly initialised (no public Conformer weights are in reach), so the
text is meaningless; what is checked is that the exported graph computes what PyTorch computes,
with dynamic batch and time, and that an installed model transcribes with consistent timings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import yaml
from test_conformer_features import read_clip
from test_conformer_tokenizer import VOCAB_SIZE, english_transcripts, train_tokenizer

from asr_stream.audio.features_nemo import NEMO_PREPROCESSOR, NemoMelSettings, batch_features, nemo_log_mel
from asr_stream.inference.conformer.export import write_export_dir
from asr_stream.inference.conformer.frames import subsampled_lengths
from asr_stream.inference.conformer.importer import add_conformer
from asr_stream.inference.conformer.manifest import ConformerManifest
from asr_stream.inference.conformer.model import ConformerCTC
from asr_stream.inference.conformer.runner import ConformerRunner, ConformerTranscript
from asr_stream.inference.ctc import greedy_ctc
from asr_stream.inference.engine import Profile
from asr_stream.inference.models import ModelError
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine
from asr_stream.inference.profiles import check_against_graph, load_profile

pytestmark = pytest.mark.slow  # one ONNX export, ~10 s

PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "conformer-ctc.yaml"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[ConformerCTC, Path, Path, Path]:
    """(model, graph, tokenizer, preprocessor YAML) as a NeMo user would hand them over."""
    return write_export_dir(tmp_path_factory.mktemp("conformer"), english_transcripts(), VOCAB_SIZE)


def test_onnx_runtime_matches_pytorch_on_a_padded_batch(exported) -> None:
    model, graph, _, _ = exported
    features, lengths = batch_features([nemo_log_mel(read_clip(i)) for i in range(3)])
    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    ours = session.run(None, {"audio_signal": features, "length": lengths})[0]
    with torch.no_grad():
        reference = model(torch.from_numpy(features), torch.from_numpy(lengths)).numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    frames = subsampled_lengths(lengths, 4)
    ours_ids, reference_ids = (greedy_ctc(lp, frames, VOCAB_SIZE, 40) for lp in (ours, reference))
    assert [[t.token_id for t in u] for u in ours_ids] == [[t.token_id for t in u] for u in reference_ids]
    assert all(ours_ids)


def test_graph_fits_the_profile_and_runs_at_its_corners(exported) -> None:
    _, graph, _, _ = exported
    profile = load_profile(PROFILE)
    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    check_against_graph(profile, "model.onnx", {i.name: i.shape for i in session.get_inputs()})
    signal = profile.inputs("model.onnx")["audio_signal"]
    assert [signal.min[2], signal.opt[2], signal.max[2]] == [50, 800, 3000]  # 0.5 s, 8 s, 30 s of 10 ms frames
    # The min corner, and the max length at a small batch (the max batch is too slow for CPU tests).
    for batch, frames in ((signal.min[0], signal.min[2]), (3, signal.max[2])):
        feeds = {"audio_signal": np.zeros((batch, 80, frames), np.float32), "length": np.full(batch, frames, np.int64)}
        assert session.run(None, feeds)[0].shape == (batch, subsampled_lengths(frames, 4), VOCAB_SIZE + 1)


def test_imported_model_transcribes_with_consistent_timings(exported, tmp_path: Path) -> None:
    _, graph, tokenizer, preprocessor = exported
    engine_dir = add_conformer("tiny-random", graph, tokenizer, preprocessor, tmp_path / "engines", language="en")
    manifest = ConformerManifest.read(engine_dir)
    assert (manifest.subsampling_factor, manifest.vocab_size, manifest.frame_ms, manifest.language) == (4, VOCAB_SIZE, 40.0, "en")
    assert manifest.features == NemoMelSettings()
    assert set(manifest.sha256) == {"model.onnx", "tokenizer.model", "preprocessor.yaml"}

    # max_batch 3: four clips go in two engine calls.
    runner = ConformerRunner.load(engine_dir, lambda path: OnnxRuntimeEngine.load(path, Profile("test", max_batch=3)))
    clips = [read_clip(i) for i in range(3)] + [read_clip(1)[:8000]]
    results = runner.transcribe_batch(clips)
    assert len(results) == len(clips) and all(isinstance(r, ConformerTranscript) and r.language == "en" for r in results)
    assert [r.tokens for r in results] == [runner.transcribe_batch([clip])[0].tokens for clip in clips]
    for clip, result in zip(clips, results):
        assert result.tokens and result.text == runner.tokenizer.decode([t.token_id for t in result.tokens])
        # The last model frame may be partly past the audio (its feature frames round up): at most one frame.
        limit_ms = len(clip) / 16 + manifest.frame_ms
        for timed in result.tokens + result.words:
            assert 0 <= timed.start_ms < timed.end_ms <= limit_ms
        for earlier, later in zip(result.tokens, result.tokens[1:]):
            assert earlier.end_ms <= later.start_ms
        assert " ".join(w.text for w in result.words) == " ".join(result.text.split())


def test_importer_refuses_mismatches(exported, tmp_path: Path) -> None:
    _, graph, tokenizer, preprocessor = exported
    engines = tmp_path / "engines"
    add_conformer("taken", graph, tokenizer, preprocessor, engines)
    with pytest.raises(ModelError, match="exists"):
        add_conformer("taken", graph, tokenizer, preprocessor, engines)
    wrong_mels = tmp_path / "preprocessor.yaml"
    wrong_mels.write_text(yaml.safe_dump({**NEMO_PREPROCESSOR, "window": "hamming"}))
    with pytest.raises(ModelError, match="window"):
        add_conformer("hamming", graph, tokenizer, wrong_mels, engines)
    eight_mels = tmp_path / "eight_mels.yaml"
    eight_mels.write_text(yaml.safe_dump({**NEMO_PREPROCESSOR, "features": 8}))
    with pytest.raises(ModelError, match="80 mel bands"):
        add_conformer("eight-mels", graph, tokenizer, eight_mels, engines)
    with pytest.raises(ModelError, match="SentencePiece"):
        add_conformer("not-a-tokenizer", graph, preprocessor, preprocessor, engines)
    with pytest.raises(ModelError, match="97 classes"):
        add_conformer("smaller-vocab", graph, train_tokenizer(tmp_path, vocab_size=64), preprocessor, engines)
    assert sorted(p.name for p in engines.iterdir()) == ["taken"]
