"""Contact phone numbers in transcript text: Chinese mobile and landline numbers only.

Callers give numbers in many shapes, and the recogniser writes them in more: `13812345678`,
`138 1234 5678`, `010-8765 4321`, `+86 138…`, digit by digit in Chinese (`幺三八…`, `零`/`洞`
for 0) or English (`one three eight…`, `oh` for 0, `double five`). Numbers also get split over
two VAD segments when the caller pauses. No library covers spoken-digit Chinese (libphonenumber
parses written numbers only), so this is a small hand-written scanner:

1. Spoken digits become digits; contiguous digits form a *group*; groups separated only by
   spaces, dashes or commas form a *run*; anything else ends a run.
2. Single-digit groups (numbers read digit by digit) are merged, since their spacing carries
   no structure.
3. In a run, from the left, the longest sequence of whole groups that is a valid number is taken;
   a valid number is never cut out of the middle of a group, so an 18-digit ID-card number or
   an order number yields nothing rather than a false phone number.

Service numbers (12345, 110, 95598, 400-/800- numbers) are not contacts and never match: a
mobile is `1[3-9]` + 9 digits, a landline is an area code (010, 02x, 0xxx) + a 7-8 digit local
number starting with 2-9.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

PhoneKind = Literal["mobile", "landline"]

_ZH_DIGITS = {"零": "0", "〇": "0", "洞": "0", "一": "1", "幺": "1", "二": "2", "两": "2", "三": "3",
              "四": "4", "五": "5", "六": "6", "七": "7", "八": "8", "九": "9"}  # fmt: skip
_EN_DIGITS = {"zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4",
              "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9"}  # fmt: skip
_REPEATS = {"double": 2, "triple": 3}

_TOKEN = re.compile(
    r"(?P<digits>[0-9]+)"
    rf"|(?P<zh>[{''.join(_ZH_DIGITS)}]+)"
    rf"|(?P<en>\b(?:{'|'.join(_EN_DIGITS)})\b)"
    rf"|(?P<repeat>\b(?:{'|'.join(_REPEATS)})\s+(?=[0-9]|(?:{'|'.join(_EN_DIGITS)})\b))"
    r"|(?P<separator>[\s\-‐‑–—,，、]+)"
    r"|(?P<other>.)",
    re.IGNORECASE | re.DOTALL,
)

_MOBILE = re.compile(r"1[3-9][0-9]{9}")
# Three-digit area codes (with the trunk 0) are 010 and 020-029, followed by 8 local digits;
# all others have four digits and 7 or 8 local digits.
_LANDLINE = re.compile(r"(0(?:10|2[0-9]))([2-9][0-9]{7})|(0[3-9][0-9]{2})([2-9][0-9]{6,7})")
_COUNTRY_PREFIXES = ("0086", "86")


@dataclass(frozen=True, slots=True)
class PhoneNumber:
    """A number as a ticket should store it: mobile `13812345678`, landline `010-87654321`."""

    number: str
    kind: PhoneKind
    text_index: int  # which of the scanned texts the number starts in


@dataclass(slots=True)
class _Group:
    digits: str
    position: int
    loose: bool  # one spoken digit (or "double five"): its spacing says nothing about grouping


def classify_number(digits: str) -> tuple[str, PhoneKind] | None:
    """The normalised number and its kind, or None when `digits` is not exactly one number."""
    for prefix in _COUNTRY_PREFIXES:
        if digits.startswith(prefix):
            national = digits[len(prefix) :]
            # Dialled from abroad the landline trunk 0 is dropped: +86 10 8765 4321.
            return _classify_national(national) or _classify_national("0" + national)
    return _classify_national(digits)


def _classify_national(digits: str) -> tuple[str, PhoneKind] | None:
    if _MOBILE.fullmatch(digits):
        return digits, "mobile"
    landline = _LANDLINE.fullmatch(digits)
    if landline:
        area, local = (part for part in landline.groups() if part)
        return f"{area}-{local}", "landline"
    return None


def find_phone_numbers(texts: Sequence[str]) -> list[PhoneNumber]:
    """Every mobile or landline number in `texts`, in order of appearance (repeats included).

    `texts` are one speaker's segments in time order; they are scanned as one text, so a
    number the speaker paused in (and the segmenter split) is still found whole.
    """
    normalised = [unicodedata.normalize("NFKC", text) for text in texts]  # full-width digits too
    starts = [0]
    for text in normalised[:-1]:
        starts.append(starts[-1] + len(text) + 1)
    found: list[PhoneNumber] = []
    for run in _runs(" ".join(normalised)):
        for number, kind, position in _numbers_in_run(_merge_loose_digits(run)):
            found.append(PhoneNumber(number, kind, text_index=bisect_right(starts, position) - 1))
    return found


def _runs(text: str) -> list[list[_Group]]:
    """Digit groups, bunched into runs that only separators hold together."""
    runs: list[list[_Group]] = [[]]
    adjacent = False  # the previous token was digits, with nothing in between
    repeat = 1
    for token in _TOKEN.finditer(text):
        kind, value = token.lastgroup, token.group()
        if kind == "repeat":
            repeat, adjacent = _REPEATS[value.split()[0].lower()], False
        elif kind in ("digits", "zh", "en"):
            digits = _to_digits(kind, value)
            digits = digits[0] * repeat + digits[1:]
            if adjacent and kind != "en":
                runs[-1][-1].digits += digits
                runs[-1][-1].loose = False
            else:
                runs[-1].append(_Group(digits, token.start(), loose=len(digits) == 1 or repeat > 1))
            adjacent = kind != "en"  # a spoken English digit is a word of its own
            repeat = 1
        elif kind == "separator":
            adjacent = False
        else:
            adjacent, repeat = False, 1
            if runs[-1]:
                runs.append([])
    return [run for run in runs if run]


def _to_digits(kind: str | None, value: str) -> str:
    if kind == "zh":
        return "".join(_ZH_DIGITS[char] for char in value)
    if kind == "en":
        return _EN_DIGITS[value.lower()]
    return value


def _merge_loose_digits(run: list[_Group]) -> list[_Group]:
    """`1 3 8 1 2 …` or `one three eight …` is one group: a reader pauses anywhere."""
    merged: list[_Group] = []
    for group in run:
        if group.loose and merged and merged[-1].loose:
            merged[-1].digits += group.digits
        else:
            merged.append(_Group(group.digits, group.position, group.loose))
    return merged


def _numbers_in_run(run: list[_Group]) -> list[tuple[str, PhoneKind, int]]:
    """Left to right, the longest span of whole groups that is one valid number (and where)."""
    found: list[tuple[str, PhoneKind, int]] = []
    first = 0
    while first < len(run):
        for last in range(len(run) - 1, first - 1, -1):
            classified = classify_number("".join(group.digits for group in run[first : last + 1]))
            if classified:
                found.append((*classified, run[first].position))
                first = last + 1
                break
        else:
            first += 1
    return found
