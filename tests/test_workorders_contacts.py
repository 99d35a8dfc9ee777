"""Contact numbers in transcript text: the shapes callers say them in, and what must not match."""

from __future__ import annotations

import pytest

from asr_stream.workorders.contacts import classify_number, find_phone_numbers


def numbers(*texts: str) -> list[str]:
    return [phone.number for phone in find_phone_numbers(list(texts))]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # written by the recogniser as digits
        ("我的电话是13812345678，谢谢", ["13812345678"]),
        ("手机 138 1234 5678", ["13812345678"]),
        ("手机138-1234-5678", ["13812345678"]),
        ("１３８１２３４５６７８", ["13812345678"]),  # full-width digits
        ("+86 138 1234 5678", ["13812345678"]),
        ("0086 13812345678", ["13812345678"]),
        ("8613812345678", ["13812345678"]),
        ("家里座机010-87654321", ["010-87654321"]),
        ("座机 021 6543 2100", ["021-65432100"]),
        ("0571-87654321", ["0571-87654321"]),
        ("0991-7654321", ["0991-7654321"]),  # four-digit area code, seven-digit local number
        ("+86 10 8765 4321", ["010-87654321"]),  # dialled from abroad: the trunk 0 is dropped
        # spoken digit by digit in Chinese
        ("幺三八幺二三四五六七八", ["13812345678"]),
        ("一三八 一二三四 五六七八", ["13812345678"]),
        ("电话是一三九，八七六五，四三二一", ["13987654321"]),
        ("零幺零 八七六五 四三二一", ["010-87654321"]),
        ("洞幺洞六二五四三二一洞", ["010-62543210"]),  # 洞 for 0 and 幺 for 1, as on the radio
        ("幺38一二三四5678", ["13812345678"]),  # mixed words and digits
        ("号码是幺八六两三四五六七八九", ["18623456789"]),  # 两 for 2
        # spoken digit by digit in English
        ("my number is one three eight one two three four five six seven eight", ["13812345678"]),
        ("One Three Eight, one two three four, five six seven eight.", ["13812345678"]),
        ("oh five seven one, eight seven six five, four three two one", ["0571-87654321"]),
        ("call one three eight double one two three four five six seven", ["13811234567"]),
        ("one five nine triple eight one two three four five", ["15988812345"]),
        ("1 3 8 1 2 3 4 5 6 7 8", ["13812345678"]),
        # several numbers, and digits that only surround one
        ("138 1234 5678 或者 139 8765 4321", ["13812345678", "13987654321"]),
        ("138 1234 5678 139 8765 4321", ["13812345678", "13987654321"]),
        ("room 1203, 13812345678", ["13812345678"]),
        ("3号楼2单元501，电话13812345678", ["13812345678"]),
    ],
)
def test_finds_the_number(text: str, expected: list[str]) -> None:
    assert numbers(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "请拨打12345市民热线",  # the hotline itself
        "报警电话110，火警119",
        "供电服务热线95598",
        "客服电话400-810-8888",  # 400/800 service numbers are not contacts
        "800 820 8820",
        "身份证号110101199003071234",  # an 18-digit ID-card number holds no phone number
        "one one zero one zero one one nine nine zero zero three zero seven one two three four",
        "订单号 2026112212345678901",
        "1381234567",  # ten digits: one short
        "138123456789",  # twelve digits: one too many
        "12812345678",  # 12x is not a mobile prefix
        "010-1234567",  # Beijing local numbers have eight digits and do not start with 1
        "一二三四五六七八九十",  # counting
        "水费一百二十三元，三十二度",
        "oh, I see, one moment",
        "",
    ],
)
def test_finds_nothing(text: str) -> None:
    assert numbers(text) == []


def test_a_number_split_over_two_segments_is_found_whole_and_placed_in_the_first() -> None:
    """The caller paused mid-number and the segmenter cut there."""
    found = find_phone_numbers(["好的，我的手机是幺三八", "一二三四五六七八", "对"])
    assert [(phone.number, phone.text_index) for phone in found] == [("13812345678", 0)]


def test_text_index_points_at_the_segment_where_each_number_starts() -> None:
    found = find_phone_numbers(["我家在3号楼", "电话13812345678", "备用 010 8765 4321"])
    assert [(phone.number, phone.kind, phone.text_index) for phone in found] == [
        ("13812345678", "mobile", 1),
        ("010-87654321", "landline", 2),
    ]


@pytest.mark.parametrize(
    ("digits", "expected"),
    [
        ("13912345678", ("13912345678", "mobile")),
        ("02987654321", ("029-87654321", "landline")),
        ("075587654321", ("0755-87654321", "landline")),
        ("075512345678", None),  # local numbers do not start with 1
        ("0755123456", None),  # six local digits
        ("00012345678", None),
        ("12345", None),
    ],
)
def test_classify_number(digits: str, expected: tuple[str, str] | None) -> None:
    assert classify_number(digits) == expected
