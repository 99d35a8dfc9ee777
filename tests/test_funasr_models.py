"""SenseVoice and Paraformer from a FunASR ONNX export directory: export -> `models add` -> runner.

No real weights are in reach (docs/mandarin.md), so the export directories are made by
`asr_stream.inference.funasr.export`: small random models with FunASR's exact ONNX interface
(names, dtypes, dynamic axes) and directory layout. The text is meaningless; what is checked is
that the graph computes what PyTorch computes with dynamic batch and time, that an import of the
directory as a user has it works in one call and refuses every mismatch in one line, and that the
runner's batching, tags, lengths and timings are consistent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import yaml
from conftest import load_mono
from test_funasr_features import write_am_mvn

from asr_stream.inference.engine import Profile
from asr_stream.inference.funasr.export import build_model, paraformer_vocabulary, sensevoice_vocabulary, write_export_dir
from asr_stream.inference.funasr.importer import add_funasr_model
from asr_stream.inference.funasr.manifest import PARAFORMER, SENSEVOICE, FunasrManifest
from asr_stream.inference.funasr.runner import FunasrRunner, FunasrTranscript, read_sensevoice_tags
from asr_stream.inference.funasr.tokens import TokenTable
from asr_stream.inference.models import ModelError
from asr_stream.inference.onnxruntime_backend import OnnxRuntimeEngine
from asr_stream.inference.profiles import check_against_graph, load_profile

pytestmark = pytest.mark.slow  # two ONNX exports and a quantisation, ~25 s

ASR_STREAM = Path(sys.executable).parent / "asr-stream"
PROFILES = Path(__file__).resolve().parents[1] / "profiles"
# The vocabulary of the test models: the Mandarin references and a few hotline terms.
HOTLINE_TERMS = ["住房公积金", "社保卡", "市民热线", "不动产登记"]


@pytest.fixture(scope="module")
def texts(speech_clips: list[dict]) -> list[str]:
    return [row["text"] for row in speech_clips if row["lang"] == "zh"] + HOTLINE_TERMS


@pytest.fixture(scope="module")
def mandarin(speech_clips: list[dict]) -> list[np.ndarray]:
    return [load_mono(row["wav"]) for row in speech_clips if row["lang"] == "zh"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> dict[str, Path]:
    """FunASR export directories as a user would have them: SenseVoice with model.onnx and model_quant.onnx, Paraformer with model.onnx."""
    root = tmp_path_factory.mktemp("funasr")
    return {
        SENSEVOICE: write_export_dir(root / "SenseVoiceSmall", SENSEVOICE, texts, quantize=True),
        PARAFORMER: write_export_dir(root / "paraformer-zh", PARAFORMER, texts),
    }


def feeds_for(family: str, batch: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
    feeds = {"speech": batch, "speech_lengths": lengths.astype(np.int32)}
    if family == SENSEVOICE:
        feeds |= {"language": np.full(len(lengths), 3, np.int32), "textnorm": np.full(len(lengths), 15, np.int32)}
    return feeds


@pytest.mark.parametrize("family", [SENSEVOICE, PARAFORMER])
def test_graph_has_funasr_interface_and_matches_pytorch(family, exports, texts) -> None:
    session = onnxruntime.InferenceSession(str(exports[family] / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {arg.name: (arg.type, len(arg.shape)) for arg in session.get_inputs()}
    outputs = {arg.name: (arg.type, len(arg.shape)) for arg in session.get_outputs()}
    if family == SENSEVOICE:
        assert inputs == dict.fromkeys(("speech_lengths", "language", "textnorm"), ("tensor(int32)", 1)) | {"speech": ("tensor(float)", 3)}
        assert outputs == {"ctc_logits": ("tensor(float)", 3), "encoder_out_lens": ("tensor(int32)", 1)}
    else:
        assert inputs == {"speech": ("tensor(float)", 3), "speech_lengths": ("tensor(int32)", 1)}
        assert outputs == {"logits": ("tensor(float)", 3), "token_num": ("tensor(int32)", 1)}
    rng = np.random.default_rng(0)
    lengths = np.array([41, 17, 3])
    batch = rng.normal(size=(3, 41, 560)).astype(np.float32)
    feeds = feeds_for(family, batch, lengths)
    ours = session.run(None, feeds)
    vocabulary = (sensevoice_vocabulary if family == SENSEVOICE else paraformer_vocabulary)(texts)
    model = build_model(family, len(vocabulary))
    with torch.no_grad():
        reference = [t.numpy() for t in model(*(torch.from_numpy(v) for v in feeds.values()))]
    np.testing.assert_allclose(ours[0], reference[0], atol=1e-4)
    np.testing.assert_array_equal(ours[1], reference[1])
    # Padding changes nothing: the shortest utterance alone gives the same scores on its valid frames.
    alone = session.run(None, feeds_for(family, batch[2:, :3], lengths[2:]))
    valid = 3 + 4 if family == SENSEVOICE else int(ours[1][2])
    np.testing.assert_allclose(alone[0][0, :valid], ours[0][2, :valid], atol=1e-4)
    assert alone[1][0] == ours[1][2]


@pytest.mark.parametrize("family", [SENSEVOICE, PARAFORMER])
def test_imported_model_transcribes_in_batches_with_consistent_results(family, exports, mandarin, tmp_path) -> None:
    engine_dir = add_funasr_model(family, f"tiny-{family}", exports[family], tmp_path / "engines", language="zh")
    manifest = FunasrManifest.read(engine_dir)
    assert (manifest.family, manifest.language, manifest.source_graph, manifest.features.feature_dim) == (family, "zh", "model.onnx", 560)
    assert manifest.predictor_bias == (1 if family == PARAFORMER else 0)
    assert sorted(p.name for p in engine_dir.iterdir()) == ["am.mvn", "config.yaml", "manifest.json", "model.onnx", "tokens.json"]

    # max_batch 2: four utterances in two engine calls; the fourth is under one 25 ms frame.
    runner = FunasrRunner.load(engine_dir, lambda path: OnnxRuntimeEngine.load(path, Profile("test", max_batch=2)))
    clips = [*mandarin, mandarin[0][:300]]
    results = runner.transcribe_batch(clips)
    assert len(results) == 4 and all(isinstance(r, FunasrTranscript) and r.language == "zh" for r in results)
    assert [r.tokens for r in results] == [runner.transcribe_batch([clip])[0].tokens for clip in clips]
    assert results[3].text == "" and results[3].segments == []
    for clip, result in zip(clips[:3], results):
        assert result.text and result.text == runner.tokens.decode(list(result.tokens))
        assert not any(runner.tokens.is_special(token) for token in result.tokens)
        (segment,) = result.segments
        assert 0 <= segment.start < segment.end <= len(clip) / 16000 + 0.06


def test_sensevoice_tags_become_fields() -> None:
    tokens = TokenTable(sensevoice_vocabulary(["你好"]))

    def query(*pieces: str) -> np.ndarray:
        logits = np.zeros((len(pieces), len(tokens)))
        for frame, piece in enumerate(pieces):
            logits[frame, tokens.ids[piece]] = 5.0
        return logits

    tags = read_sensevoice_tags(tokens, query("<|zh|>", "<|ANGRY|>", "<|Speech|>", "<|woitn|>"))
    assert (tags.language, tags.emotion, tags.event, tags.no_speech) == ("zh", "angry", "speech", False)
    tags = read_sensevoice_tags(tokens, query("<|nospeech|>", "<|EMO_UNKNOWN|>", "<|Event_UNK|>", "<|woitn|>"))
    assert (tags.language, tags.emotion, tags.event, tags.no_speech) == (None, None, None, True)
    tags = read_sensevoice_tags(tokens, query("你", "好", "<|BGM|>", "<|withitn|>"))  # not tags where tags belong: no fields
    assert (tags.language, tags.emotion, tags.event) == (None, None, "bgm")


def test_quantized_export_and_detected_language(exports, mandarin, tmp_path) -> None:
    engine_dir = add_funasr_model(SENSEVOICE, "tiny-int8", exports[SENSEVOICE], tmp_path, quantized=True, itn=True)
    manifest = FunasrManifest.read(engine_dir)
    assert (manifest.source_graph, manifest.quantized, manifest.text_norm, manifest.language) == ("model_quant.onnx", True, "withitn", None)
    (result,) = FunasrRunner.load(engine_dir, OnnxRuntimeEngine.load).transcribe_batch(mandarin[:1])
    assert result.text  # a random model detects no language tag: None, as SenseVoice with "auto" hearing none
    assert result.language is None


def test_tokens_txt_of_sherpa_onnx_is_read(exports, tmp_path) -> None:
    source = shutil.copytree(exports[PARAFORMER], tmp_path / "sherpa")
    pieces = json.loads((source / "tokens.json").read_text())
    (source / "tokens.json").unlink()
    (source / "tokens.txt").write_text("".join(f"{piece} {i}\n" for i, piece in enumerate(pieces)))
    engine_dir = add_funasr_model(PARAFORMER, "from-txt", source, tmp_path / "engines")
    assert json.loads((engine_dir / "tokens.json").read_text()) == pieces


def _broken_copy(source: Path, tmp_path: Path, name: str) -> Path:
    return shutil.copytree(source, tmp_path / name)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no_graph", "has no model.onnx or model_quant.onnx"),
        ("no_tokens", "has no tokens.json or tokens.txt"),
        ("no_cmvn", "has no am.mvn"),
        ("no_config", "has no config.yaml"),
        ("other_family", "describes model Paraformer, not a sensevoice model: add it with `asr-stream models add paraformer`"),
        ("contextual", "is not supported"),
        ("cmvn_width", "normalises 80 values; the front end makes 560"),
        ("vocabulary", "classes; the token list has"),
        ("wrong_graph", "takes inputs ['speech', 'speech_lengths'], not FunASR's sensevoice export's"),
        ("no_tags", "lacks SenseVoice's tags"),
        ("sample_rate", "fs=8000 is not supported"),
    ],
)
def test_models_add_refuses_mismatches_in_one_line(case, message, exports, tmp_path) -> None:
    source = _broken_copy(exports[SENSEVOICE], tmp_path, case)
    config = yaml.safe_load((source / "config.yaml").read_text())
    if case == "no_graph":
        (source / "model.onnx").unlink()
        (source / "model_quant.onnx").unlink()
    elif case == "no_tokens":
        (source / "tokens.json").unlink()
    elif case == "no_cmvn":
        (source / "am.mvn").unlink()
    elif case == "no_config":
        (source / "config.yaml").unlink()
    elif case in ("other_family", "contextual", "sample_rate"):
        config = {**config, "model": {"other_family": "Paraformer", "contextual": "SeacoParaformer"}.get(case, config["model"])}
        if case == "sample_rate":
            config["frontend_conf"]["fs"] = 8000
        (source / "config.yaml").write_text(yaml.safe_dump(config))
    elif case == "cmvn_width":
        write_am_mvn(source / "am.mvn", np.zeros(80), np.ones(80))
    elif case == "vocabulary":
        pieces = json.loads((source / "tokens.json").read_text())
        (source / "tokens.json").write_text(json.dumps([*pieces, "多"], ensure_ascii=False))
    elif case == "wrong_graph":
        shutil.copyfile(exports[PARAFORMER] / "model.onnx", source / "model.onnx")
    elif case == "no_tags":
        pieces = json.loads((source / "tokens.json").read_text())
        (source / "tokens.json").write_text(json.dumps([p.replace("<|zh|>", "<|cn|>") for p in pieces], ensure_ascii=False))
    engines = tmp_path / "engines"
    with pytest.raises(ModelError) as error:
        add_funasr_model(SENSEVOICE, case, source, engines)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not engines.exists() or not any(engines.iterdir()), "a refused import left files behind"


def test_cli_adds_a_model_in_one_command_and_refuses_in_one_line(exports, tmp_path) -> None:
    engines = tmp_path / "engines"

    def cli(*args: str | Path) -> subprocess.CompletedProcess:
        command = [str(ASR_STREAM), "--engines-dir", str(engines), "models", "add", *map(str, args)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    added = cli("paraformer", "para", "--dir", exports[PARAFORMER])
    assert added.returncode == 0 and added.stdout.strip() == str(engines / "para"), added.stderr
    again = cli("paraformer", "para", "--dir", exports[PARAFORMER])
    assert again.returncode == 2 and "exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    wrong = cli("sensevoice", "sv", "--dir", tmp_path / "nowhere")
    assert wrong.returncode == 2 and "is not a directory" in wrong.stderr and "Traceback" not in wrong.stderr


@pytest.mark.parametrize("family", [SENSEVOICE, PARAFORMER])
def test_graph_fits_its_profile_and_runs_at_the_corners(family, exports) -> None:
    """Variable length: one profile from 0.3 s to 30 s of 60 ms frames, checked against the graph's declared inputs."""
    profile = load_profile(PROFILES / f"{family}.yaml")
    session = onnxruntime.InferenceSession(str(exports[family] / "model.onnx"), providers=["CPUExecutionProvider"])
    check_against_graph(profile, "model.onnx", {arg.name: arg.shape for arg in session.get_inputs()})
    speech = profile.inputs("model.onnx")["speech"]
    assert [speech.min[1], speech.opt[1], speech.max[1]] == [5, 134, 500]  # 0.3 s, 8 s, 30 s
    for batch, frames in ((speech.min[0], speech.min[1]), (2, speech.max[1])):  # the max batch is too slow for CPU tests
        scores, counts = session.run(None, feeds_for(family, np.zeros((batch, frames, 560), np.float32), np.full(batch, frames)))
        assert scores.shape[0] == batch and counts.shape == (batch,)


def test_audio_longer_than_the_profile_goes_in_30_s_pieces(exports, mandarin, tmp_path) -> None:
    engine_dir = add_funasr_model(SENSEVOICE, "long", exports[SENSEVOICE], tmp_path, language="zh")
    runner = FunasrRunner.load(engine_dir, OnnxRuntimeEngine.load)
    long = np.concatenate(mandarin * 3)  # ~38 s: a 30 s piece and an 8 s one
    (whole,) = runner.transcribe_batch([long])
    first, second = runner.transcribe_batch([long[: 30 * 16000], long[30 * 16000 :]])
    assert whole.tokens == first.tokens + second.tokens and whole.text == runner.tokens.decode(list(whole.tokens))
    assert whole.timed_tokens[len(first.tokens)].start_ms == second.timed_tokens[0].start_ms + 30_000
    assert whole.duration_s == pytest.approx(len(long) / 16000)
