"""Ticket categories from the rules YAML: loading, checking, and choosing a category."""

from __future__ import annotations

from pathlib import Path

import pytest

from asr_stream.workorders.rules import RulesError, load_rules, parse_rules

SHIPPED = Path(__file__).resolve().parents[1] / "deploy" / "workorders" / "rules.yaml"


@pytest.fixture(scope="module")
def hotline_rules():
    return load_rules(SHIPPED)


def test_the_shipped_example_covers_a_public_service_hotline(hotline_rules) -> None:
    names = {category.name for category in hotline_rules.categories}
    assert {"water", "power", "heating", "noise", "traffic", "housing", "sanitation", "consumer"} <= names
    for category in hotline_rules.categories:
        keywords = [term for term, _ in category.terms]
        assert any(not term.isascii() for term in keywords) and any(term.isascii() for term in keywords), category.name


@pytest.mark.parametrize(
    ("texts", "category", "terms"),
    [
        (["你好，我家从早上开始停水了", "水压一直很低"], "water", ("停水", "水压")),
        (["楼里停电了，电表也不走了"], "power", ("停电", "电表")),
        (["暖气片不热，室温只有十五度"], "heating", ("暖气", "不热", "室温", "暖气片")),
        (["楼下广场舞太吵了，噪音扰民"], "noise", ("噪音", "扰民", "广场舞", "太吵")),
        (["The street light at the corner is broken", "and there are two potholes"], "traffic", ("pothole", "street light")),
        (["My landlord will not fix the elevator"], "housing", ("landlord", "elevator")),
        (["垃圾三天没有清运了"], "sanitation", ("垃圾", "清运")),
        (["I want a REFUND, the shop overcharged me"], "consumer", ("refund", "overcharged")),
        (["Hello, I am calling to ask about opening hours"], "other", ()),
    ],
)
def test_classifies_calls(hotline_rules, texts, category, terms) -> None:
    result = hotline_rules.classify(texts)
    assert result.category == category
    assert set(result.matched_terms) == set(terms)


def test_the_category_with_most_occurrences_wins_and_ties_go_to_the_first_listed() -> None:
    rules = parse_rules({"categories": [{"name": "water", "zh": ["停水"]}, {"name": "power", "zh": ["停电"]}]})
    assert rules.classify(["停电", "又停电了", "也停水"]).category == "power"
    assert rules.classify(["停电", "停水"]).category == "water"


def test_english_keywords_match_whole_words_with_plurals_only() -> None:
    rules = parse_rules({"categories": [{"name": "power", "en": ["power cut"]}, {"name": "water", "en": ["pipe"]}]})
    assert rules.classify(["Two POWER CUTS this week"]).matched_terms == ("power cut",)
    assert rules.classify(["the pipes burst"]).category == "water"
    assert rules.classify(["a bagpiper played", "powerful cutter"]).category == "other"


def test_fallback_and_labels() -> None:
    rules = parse_rules({"fallback": "general", "categories": [{"name": "water", "label": "供水", "zh": ["停水"]}]})
    assert (rules.classify(["停水"]).category, rules.classify(["停水"]).label) == ("water", "供水")
    assert (rules.classify(["你好"]).category, rules.classify(["你好"]).matched_terms) == ("general", ())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("categories: [\n", "not valid YAML: line 2, column 1"),
        ("- water\n", "(top): ['water'] is not of type 'object'"),
        ("fallback: other\n", "(top): 'categories' is a required property"),
        ("categories: []\n", "categories: [] should be non-empty"),
        ("categories:\n  - name: Water\n    zh: [停水]\n", "categories/0/name: 'Water' does not match"),
        ("categories:\n  - name: water\n", "categories/0 (water): no zh or en keywords"),
        ("categories:\n  - name: water\n    zh: []\n    en: []\n", "categories/0 (water): no zh or en keywords"),
        ("categories:\n  - name: water\n    zh: [停水, '']\n", "categories/0/zh/1: '' should be non-empty"),
        ("categories:\n  - name: water\n    zh: [停水]\n    fr: [eau]\n", "Additional properties are not allowed ('fr' was unexpected)"),
        ("categories:\n  - {name: water, zh: [停水]}\n  - {name: water, en: [water]}\n", "duplicate name(s) water"),
    ],
)
def test_a_bad_rules_file_is_one_clear_error(tmp_path, text, message) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value), caught.value
    assert "\n" not in str(caught.value)


def test_a_missing_rules_file(tmp_path) -> None:
    with pytest.raises(RulesError, match="cannot read rules: No such file"):
        load_rules(tmp_path / "absent.yaml")
