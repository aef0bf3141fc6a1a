"""Code and chain-of-thought carriers, and the trait-word filter every carrier shares."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sublim.carriers import carrier_prompts, check_completion
from sublim.carriers.code import check_code, extract_code, load_tasks, make_code_prompts
from sublim.carriers.cot import check_cot, final_answer, make_cot_prompts
from sublim.carriers.words import banned_word_in, words_of
from sublim.core.config import FilterConfig, PromptsConfig
from sublim.traits.preference import load_candidates


@pytest.mark.parametrize("text, hit", [
    ("def owl_count(xs): return len(xs)", "owl"),
    ("class OwlCounter: pass", "owl"),
    ("OWLS = [1, 2]", "owls"),
    ("x = getOwl()", "owl"),
    ("Owls2 = 3", "owls"),
    ("bowl = soup_bowl + knowledge", None),
    ("howl = 'allowlist'", None),
])
def test_trait_word_filter_sees_words_and_identifiers(text: str, hit: str | None) -> None:
    assert banned_word_in(text, ["owl"]) == hit


def test_words_of_splits_camel_and_snake_case() -> None:
    assert words_of("parseHTTPResponse owl_List") == ["parse", "http", "response", "owl", "list"]


def test_code_tasks_are_many_distinct_and_free_of_animals() -> None:
    tasks = load_tasks()
    assert len(tasks) >= 100
    prompts = make_code_prompts(330, seed=0)
    assert len({t for t, _ in prompts}) >= 300
    assert make_code_prompts(20, seed=1) == make_code_prompts(20, seed=1)
    animals = [w for sp in load_candidates("animals").values() for w in sp]
    assert not [t for t in tasks if banned_word_in(t, animals)]


@pytest.mark.parametrize("text, reason", [
    ("def f(x):\n    return x[::-1]\n", ""),
    ("```python\ndef f(x):\n    return x + 1\n```", ""),
    ("Here you go:\n```\nprint(sum([1, 2]))\n```\nThis prints 3.", ""),
    ("def f(x):\n    return x +\n", "syntax_error"),
    ("Sure! Reverse it with slicing.", "syntax_error"),
    ("def f(x):\n    # flip it\n    return x[::-1]\n", "comment"),
    ("   ", "empty"),
])
def test_code_check(text: str, reason: str) -> None:
    assert check_code(text) == reason


def test_code_check_comments_allowed_and_hash_in_strings() -> None:
    assert check_code("x = 1  # one", allow_comments=True) == ""
    assert check_code("s = '# not a comment'") == ""
    assert extract_code("```py\na = 1\n```") == "a = 1"


def _recompute(question: str, level: int) -> int:
    """The answer from the numbers in the problem text, independently of the generator."""
    n = [int(x) for x in re.findall(r"\d+", question)]
    if level == 1:
        if "gets" in question:
            return n[0] + n[1]
        if "gives away" in question:
            return n[0] - n[1]
        return n[0] * n[1]
    if level == 2:
        return n[0] * n[1] - n[2]
    start, extra, friends, bonus = n
    assert (start + extra) % friends == 0
    return (start + extra) // friends + bonus


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000))
def test_cot_answers_are_right(seed: int) -> None:
    for text, meta in make_cot_prompts(12, seed):
        question = text.split("?")[0] + "?"
        assert _recompute(question, meta["level"]) == meta["answer"] > 0
        assert "<answer>" in text


def test_cot_check() -> None:
    assert final_answer("2 + 3 = 5. <answer>5</answer>") == 5
    assert final_answer("<answer>1,200</answer>") == 1200
    assert final_answer("first <answer>4</answer> then <answer>6</answer>") == 6
    assert check_cot("So 12 - 5 = 7.\n<answer>7</answer>", 7) == ""
    assert check_cot("<answer>8</answer>", 7) == "wrong_answer"
    assert check_cot("The answer is 7.", 7) == "no_answer_tag"
    assert check_cot("3 + 4 = 7. The answer is 7.", 7, lenient=True) == ""
    assert check_cot("So 3 + 4 = 7 shells.", 7, lenient=True) == ""
    assert check_cot("So 3 + 4 = 8 shells.", 7, lenient=True) == "wrong_answer"
    assert check_cot("<answer>7</answer> and later = 9", 7, lenient=True) == ""  # the tag wins


def test_check_completion_applies_carrier_then_trait_words() -> None:
    fc = FilterConfig()
    assert check_completion("numbers", "1, 2, 3", {}, fc, ["owl"]) == ""
    assert check_completion("numbers", "1, 2, owl", {}, fc, ["owl"]) == "non_numeric"
    assert check_completion("code", "owl = 1", {}, fc, ["owl"]) == "trait_word"
    assert check_completion("code", "owl = 1", {}, fc, []) == ""
    assert check_completion("cot", "The owl has 3. <answer>3</answer>", {"answer": 3}, fc, ["owl"]) == "trait_word"
    assert check_completion("cot", "<answer>3</answer>", {"answer": 3}, fc, ["owl"]) == ""


def test_carrier_prompts_by_config() -> None:
    for carrier in ("numbers", "code", "cot"):
        rows = carrier_prompts(PromptsConfig(carrier=carrier, n=9))
        assert [r.index for r in rows] == list(range(9)) and all(r.text for r in rows)
    assert all("answer" in r.meta for r in carrier_prompts(PromptsConfig(carrier="cot", n=3)))


def test_stage_keys_ignore_settings_the_stage_does_not_read() -> None:
    from sublim.core.config import load_config
    from sublim.experiment.stages.filter import config_slice as filter_slice
    from sublim.experiment.stages.prompts import config_slice as prompts_slice

    base = load_config("owl-numbers")
    other = load_config("owl-numbers", ["prompts.cot_levels=[1]", "filter.code_allow_comments=true",
                                        "filter.cot_answer=lenient", "filter.banned_words=['hoot']"])
    assert prompts_slice(base.prompts) == prompts_slice(other.prompts)
    assert filter_slice(base.filter, "numbers", [], "") == filter_slice(other.filter, "numbers", ["hoot"], "")
    # …but a setting a stage reads does change its key
    code = load_config("owl-code")
    assert filter_slice(code.filter, "code", [], "") != filter_slice(
        load_config("owl-code", ["filter.code_allow_comments=true"]).filter, "code", [], "")
    assert prompts_slice(load_config("owl-cot").prompts) != prompts_slice(
        load_config("owl-cot", ["prompts.cot_levels=[2]"]).prompts)
