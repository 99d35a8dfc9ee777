"""Chinese script conversion with OpenCC, on real Traditional/Simplified pairs."""

from __future__ import annotations

import pytest

from asr_stream.transcript.script import ScriptConverter

# (Traditional, Simplified): Whisper base's own output on the shared AISHELL clips, and pairs where
# one character maps to several and only phrase context decides.
PAIRS = [
    ("廣州市房地產中介協會分析", "广州市房地产中介协会分析"),
    ("甚至出現交易幾乎停滯的情況", "甚至出现交易几乎停滞的情况"),
    ("一二線城市雖然也處於調整中。", "一二线城市虽然也处于调整中。"),
    ("頭髮", "头发"),
    ("發展", "发展"),
    ("乾燥", "干燥"),
    ("後面", "后面"),
    ("皇后", "皇后"),
]


@pytest.mark.parametrize(("traditional", "simplified"), PAIRS)
def test_both_directions(traditional: str, simplified: str) -> None:
    assert ScriptConverter("simplified").convert(traditional, "zh") == simplified
    assert ScriptConverter("simplified").convert(simplified, "zh") == simplified  # already Simplified: unchanged
    assert ScriptConverter("traditional").convert(simplified, "zh") == traditional


def test_phrase_context_decides_the_character() -> None:
    """乾 is 干 in 乾燥 (dry) but stays in the name 乾隆: a per-character table gets one of them wrong."""
    assert ScriptConverter("simplified").convert("乾隆年間很乾燥", "zh") == "乾隆年间很干燥"


def test_only_chinese_is_converted() -> None:
    converter = ScriptConverter("simplified")
    assert converter.convert("後面", "yue") == "后面"  # Cantonese is written in Chinese characters too
    assert converter.convert("後面", "ja") == "後面"  # Japanese kanji are not Traditional Chinese
    assert converter.convert("後面", None) == "後面"
    assert ScriptConverter("original").convert("後面", "zh") == "後面"


def test_unknown_script_is_refused() -> None:
    with pytest.raises(ValueError, match="simplified, traditional, original"):
        ScriptConverter("pinyin")  # type: ignore[arg-type]
