"""Ticket categories from keywords: which kind of work order a call is about.

An operator keeps the rules in a YAML file (`deploy/workorders/rules.yaml` is the example for a
public-service hotline): each category has Chinese and English keywords. A call's category is
the one whose keywords occur most often in its final transcript (both parties; ties go to the
category listed first); the keywords that matched go into the draft so a human can see why.

Chinese keywords match as substrings (Chinese has no spaces between words); English keywords
match whole words, case-insensitively, with an optional plural `s`/`es` (`pipe` finds `pipes`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from asr_stream.errors import OperatorError

_KEYWORDS = {"type": "array", "items": {"type": "string", "minLength": 1}}
RULES_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["categories"],
    "properties": {
        "fallback": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
        "categories": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
                    "label": {"type": "string"},
                    "zh": _KEYWORDS,
                    "en": _KEYWORDS,
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}


class RulesError(OperatorError):
    """The rules file cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Classification:
    """The chosen category and the keywords of that category that occur in the call."""

    category: str
    label: str
    matched_terms: tuple[str, ...]


@dataclass(frozen=True)
class Category:
    name: str
    label: str
    terms: tuple[tuple[str, re.Pattern[str]], ...]  # (keyword as written, its pattern)

    def occurrences(self, text: str) -> dict[str, int]:
        """How often each keyword occurs in `text` (NFKC-normalised), for those that do."""
        counts = {term: len(pattern.findall(text)) for term, pattern in self.terms}
        return {term: count for term, count in counts.items() if count}


@dataclass(frozen=True)
class Rules:
    categories: tuple[Category, ...]
    fallback: str  # the category of a call no keyword matched

    def classify(self, texts: Iterable[str]) -> Classification:
        text = "\n".join(unicodedata.normalize("NFKC", part) for part in texts)
        best: tuple[int, Category, dict[str, int]] | None = None
        for category in self.categories:
            found = category.occurrences(text)
            score = sum(found.values())
            if score and (best is None or score > best[0]):
                best = (score, category, found)
        if best is None:
            return Classification(self.fallback, self.fallback, ())
        return Classification(best[1].name, best[1].label, tuple(best[2]))


def _pattern(term: str, english: bool) -> re.Pattern[str]:
    escaped = re.escape(unicodedata.normalize("NFKC", term))
    if english:
        return re.compile(rf"\b{escaped}(?:s|es)?\b", re.IGNORECASE)
    return re.compile(escaped)


def parse_rules(data: Any, source: str = "rules") -> Rules:
    """Rules from already-loaded YAML; every schema problem is reported with its path."""
    problems = sorted(Draft202012Validator(RULES_SCHEMA).iter_errors(data), key=lambda error: list(error.absolute_path))
    if problems:
        first = problems[0]
        where = "/".join(str(part) for part in first.absolute_path) or "(top)"
        raise RulesError(f"{source}: {where}: {first.message}")
    for index, entry in enumerate(data["categories"]):
        if not entry.get("zh") and not entry.get("en"):
            raise RulesError(f"{source}: categories/{index} ({entry['name']}): no zh or en keywords")
    names = [entry["name"] for entry in data["categories"]]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise RulesError(f"{source}: categories: duplicate name(s) {', '.join(duplicates)}")
    categories = tuple(
        Category(
            name=entry["name"],
            label=entry.get("label", entry["name"]),
            terms=tuple((term, _pattern(term, english=False)) for term in entry.get("zh", ()))
            + tuple((term, _pattern(term, english=True)) for term in entry.get("en", ())),
        )
        for entry in data["categories"]
    )
    return Rules(categories, data.get("fallback", "other"))


def load_rules(path: str | Path) -> Rules:
    """Read and check a rules YAML file; any problem is a RulesError naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise RulesError(f"{path}: cannot read rules: {error.strerror or error}") from error
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise RulesError(f"{path}: not valid YAML: {where}{getattr(error, 'problem', None) or error}") from error
    return parse_rules(data, str(path))
