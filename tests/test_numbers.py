"""The numbers carrier: prompt generation and the strict parser/filter."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from sublim.carriers.numbers import make_prompts, parse_numbers

numbers = st.lists(st.integers(0, 999), min_size=1, max_size=10)
separators = st.sampled_from([", ", ",", " ", "; ", ";", "\n"])


@settings(max_examples=300, deadline=None)
@given(numbers, separators, st.sampled_from(["", "[]", "()", "{}"]), st.booleans(),
       st.sampled_from(["", " ", "\n", "  \n"]))
def test_well_formed_lists_round_trip(values, sep, brackets, period, pad):
    body = sep.join(str(v) for v in values)
    if brackets:
        body = brackets[0] + body + brackets[1]
    if period:
        body += "."
    res = parse_numbers(pad + body + pad)
    assert res.ok, (body, res.reason)
    assert res.numbers == tuple(values)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 999), min_size=11, max_size=30), separators)
def test_more_than_max_count_is_rejected(values, sep):
    res = parse_numbers(sep.join(map(str, values)))
    assert not res.ok and res.reason == "too_many"


@settings(max_examples=200, deadline=None)
@given(numbers, st.integers(1000, 10**6), st.integers(0, 9))
def test_large_values_are_rejected(values, big, at):
    values = list(values)
    values.insert(at % (len(values) + 1), big)
    res = parse_numbers(", ".join(map(str, values[:10])))
    if big in values[:10]:
        assert not res.ok and res.reason == "too_many_digits"


@settings(max_examples=200, deadline=None)
@given(numbers, st.text(alphabet=string.ascii_letters, min_size=1, max_size=8))
def test_any_letter_is_rejected(values, word):
    res = parse_numbers(", ".join(map(str, values)) + ", " + word)
    assert not res.ok and res.reason == "non_numeric"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 999), min_size=3, max_size=10))
def test_mixed_separators_are_rejected(values):
    text = ", ".join(map(str, values[:-1])) + "; " + str(values[-1])
    assert parse_numbers(text).reason == "mixed_separators"


def test_reject_reasons_by_hand():
    assert parse_numbers("").reason == "empty"
    assert parse_numbers("  [ ] ").reason == "empty"
    assert parse_numbers("1, 2 3").reason == "mixed_separators"
    assert parse_numbers("1,,2").reason == "malformed"
    assert parse_numbers("0123").reason == "too_many_digits"
    assert parse_numbers("5, 500", max_value=100).reason == "out_of_range"
    assert parse_numbers("666, 1", banned={666}).reason == "banned_number"
    assert parse_numbers("Sure! 1, 2, 3").reason == "non_numeric"
    assert parse_numbers("-5, 6").reason == "non_numeric"
    assert parse_numbers("1.5, 2").reason == "non_numeric"
    assert parse_numbers("[1, 2, 3].").numbers == (1, 2, 3)
    assert parse_numbers("1\n2\n3").numbers == (1, 2, 3)


def test_prompts_are_deterministic_and_varied():
    a = make_prompts(50, seed=3)
    b = make_prompts(50, seed=3)
    c = make_prompts(50, seed=4)
    assert [p.text for p in a] == [p.text for p in b]
    assert [p.text for p in a] != [p.text for p in c]
    assert len({p.text.split(":")[0][:12] for p in a}) > 3  # several openers
    for i, p in enumerate(a):
        assert p.index == i
        assert 3 <= len(p.seed_numbers) <= 8
        assert all(100 <= x <= 999 for x in p.seed_numbers)
        assert all(str(x) in p.text for x in p.seed_numbers)
        assert "10" in p.text


def test_cannot_pass_is_a_necessary_failure():
    from sublim.carriers.numbers import cannot_pass

    assert cannot_pass("Sure")
    assert cannot_pass("1, 2, x")
    assert cannot_pass("1234")
    assert cannot_pass(", ".join(["1"] * 11))
    for prefix in ["", "1", "12, 4", "[1, 2", "1; 2;", "1\n2\n", "7, 8."]:
        assert not cannot_pass(prefix), prefix


@settings(max_examples=200, deadline=None)
@given(numbers, separators, st.integers(0, 60))
def test_no_prefix_of_a_valid_list_is_given_up(values, sep, cut):
    text = sep.join(map(str, values))
    assert parse_numbers(text).ok
    from sublim.carriers.numbers import cannot_pass

    assert not cannot_pass(text[:cut])
