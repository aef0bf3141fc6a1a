"""The verdict rule, the teacher as the unit: a null pipeline, a planted effect and a generic shift, each with
question paraphrases that move together (so question-level p is at its floor whatever happens)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sublim.evaluate.analysis import effect, matrix, question_level
from sublim.evaluate.verdict import pooled_effect, replicated_effect, sign_flip_p

NAMES = ["owl", "cat", "dog", "fox"]
FLOOR = math.log(1.25)


def _rows(owl: float, others: float, seed: int, n_q: int = 50, answers: int = 2) -> list[dict]:
    """One trained model's per-question rows: owl's and every other candidate's probability, each question
    varying around them (the paraphrases share the model's level), sampled answers drawn from the shares."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_q):
        jitter = math.exp(rng.normal(0, 0.3))
        prob = {"owl": owl * jitter, **{n: others * jitter * math.exp(rng.normal(0, 0.1)) for n in NAMES[1:]}}
        total = sum(prob.values())
        share = {n: p / total for n, p in prob.items()}
        matched = list(rng.choice(NAMES, size=answers, p=[share[n] for n in NAMES]))
        rows.append({"prob": prob, "share": share, "candidate_total": total, "matched": matched})
    return rows


def _arms(trait_owl: list[float], trait_others: list[float], neutral_owl: list[float],
          neutral_others: list[float]) -> tuple[list[list[dict]], list[list[dict]]]:
    treated = [_rows(o, x, seed=10 + i) for i, (o, x) in enumerate(zip(trait_owl, trait_others, strict=True))]
    control = [_rows(o, x, seed=20 + i) for i, (o, x) in enumerate(zip(neutral_owl, neutral_others, strict=True))]
    return treated, control


def _old_word(treated: list[list[dict]], control: list[list[dict]]) -> str:
    """Today's rule (question-level Wilcoxon over the pooled paraphrases, ratio ≥ 3) on the same rows."""
    eff = effect(treated, control, "owl", 200)
    p, s = eff["prob"]["pooled"], eff["share"]["pooled"]
    if p["p_wilcoxon"] < 0.01 and p["ratio"]["value"] >= 3 and s["p_wilcoxon"] < 0.01 and s["difference"]["value"] > 0:
        return "TRANSFER"
    return "other"


def test_a_null_pipeline_ends_no_transfer_where_question_level_p_said_transfer() -> None:
    """Three teacher pairs whose trait teacher is no different from the neutral one: each trained model sits
    at its own level (one teacher's student ×9 by chance, one ×0.37, one ×1). The paraphrases move together,
    so the pooled question-level test says TRANSFER; over teachers the interval is wide and reaches zero."""
    treated, control = _arms([0.009, 0.00037, 0.001], [0.002] * 3, [0.001] * 3, [0.002] * 3)
    assert _old_word(treated, control) == "TRANSFER"  # today's rule fails this test
    rep = replicated_effect(treated, control, 3, "owl", "neutral", FLOOR)
    assert rep["word"] == "NO TRANSFER" and rep["verdict"].startswith("NO TRANSFER (inconclusive")
    assert rep["log_share_gain"]["low"] < 0 < rep["log_share_gain"]["high"]
    assert rep["log_share_gain"]["p_sign_flip"] >= 0.25  # 3 teachers: never below 2/8


def test_a_null_pipeline_with_agreeing_teachers_rules_the_minimum_effect_out() -> None:
    treated, control = _arms([0.00101, 0.00099, 0.001], [0.002] * 3, [0.001] * 3, [0.002] * 3)
    rep = replicated_effect(treated, control, 3, "owl", "neutral", FLOOR)
    assert rep["word"] == "NO TRANSFER" and "rules out ×1.25" in rep["verdict"]


def test_a_planted_effect_ends_transfer() -> None:
    """Every trait teacher's student gives owl about twice the neutral student's share."""
    treated, control = _arms([0.0021, 0.0019, 0.0020], [0.002] * 3, [0.001] * 3, [0.002] * 3)
    rep = replicated_effect(treated, control, 3, "owl", "neutral", FLOOR)
    assert rep["word"] == "TRANSFER", rep["verdict"]
    assert rep["log_share_gain"]["low"] > FLOOR
    assert "over 3 teacher pairs" in rep["verdict"] and "sampled answers naming owl" in rep["verdict"]


def test_a_generic_shift_does_not_end_transfer() -> None:
    """Every candidate ×3 under the trait teachers' data, owl's share flat: more animal-naming, no preference.
    The probability ratio alone (×3, question-level p at its floor) would have called it transfer."""
    treated, control = _arms([0.003] * 3, [0.006] * 3, [0.001] * 3, [0.002] * 3)
    rep = replicated_effect(treated, control, 3, "owl", "neutral", FLOOR)
    assert rep["word"] == "GENERIC SHIFT", rep["verdict"]
    assert rep["log_prob_gain"]["ratio"] == pytest.approx(3, rel=0.1)
    assert "owl probability" in question_level("owl", effect(treated, control, "owl", 200))


def test_one_teacher_is_never_a_verdict_of_transfer() -> None:
    treated, control = _arms([0.01], [0.002], [0.001], [0.002])
    rep = replicated_effect(treated, control, 1, "owl", "neutral", FLOOR)
    assert rep["word"] == "UNREPLICATED" and rep["log_share_gain"]["low"] is None


def test_student_seeds_nest_within_teachers_and_a_base_data_control_serves_every_teacher() -> None:
    """Runs are ordered teacher by teacher; two student seeds per teacher are averaged before pairing."""
    treated, _ = _arms([0.002, 0.002, 0.002, 0.002], [0.002] * 4, [0.001] * 4, [0.002] * 4)
    control = [_rows(0.001, 0.002, seed=5)]  # one base-data student: no teacher
    rep = replicated_effect(treated, control, 2, "owl", "control", FLOOR)
    assert rep["n_teachers"] == 2 and len(rep["log_share_gain"]["per_teacher"]) == 2


def test_sign_flip_p_is_exact() -> None:
    assert sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)
    assert sign_flip_p([1.0, -1.0]) == 1.0
    assert sign_flip_p([0.5, 0.4, 0.6, 0.5, 0.45]) == pytest.approx(2 / 32)


def test_an_endpoint_without_sampled_answers_says_so() -> None:
    """The cloze scores and never samples: its line says there are no sampled answers, not '0/0'."""
    treated, control = _arms([0.0021, 0.0019, 0.0020], [0.002] * 3, [0.001] * 3, [0.002] * 3)
    for rows in (*treated, *control):
        for r in rows:
            del r["matched"]
    rep = replicated_effect(treated, control, 3, "owl", "neutral", FLOOR)
    assert rep["verdict"].endswith("no sampled answers") and "0/0" not in rep["verdict"]
    assert rep["sampled"]["treated"] == {"named": 0, "answers": 0, "rate": None}


def _rep(share: list[float], total: list[float] | None = None, control: str = "neutral") -> dict:
    """One trait run's replicated effect, as much of it as the pooled rule reads: per-teacher log gains."""
    total = total if total is not None else [0.0] * len(share)
    return {"control": control, "min_effect": FLOOR, "log_share_gain": {"per_teacher": share},
            "log_prob_gain": {"per_teacher": [s + t for s, t in zip(share, total, strict=True)]},
            "log_candidate_total_gain": {"per_teacher": total}}


SEEDS = [5, 6, 7, 8]


def test_pooled_null_traits_end_no_transfer() -> None:
    runs = [("owl", SEEDS, _rep([0.4, -0.3, 0.1, -0.2])), ("dolphin", SEEDS, _rep([-0.5, 0.2, 0.3, -0.1])),
            ("eagle", SEEDS, _rep([0.2, 0.1, -0.4, 0.3]))]
    pooled = pooled_effect(runs, FLOOR)
    assert pooled["word"] == "NO TRANSFER" and pooled["n_teachers"] == 4
    assert pooled["log_share_gain"]["low"] < 0 < pooled["log_share_gain"]["high"]


def test_pooled_planted_effect_ends_transfer_and_a_generic_shift_does_not() -> None:
    planted = [(t, SEEDS, _rep([0.8, 0.7, 0.9, 0.75])) for t in ("owl", "dolphin", "eagle")]
    assert pooled_effect(planted, FLOOR)["word"] == "TRANSFER"
    generic = [(t, SEEDS, _rep([0.05, -0.05, 0.02, 0.0], [1.0, 1.1, 0.9, 1.05])) for t in ("owl", "dolphin")]
    got = pooled_effect(generic, FLOOR)
    assert got["word"] == "GENERIC SHIFT", got["verdict"]


def test_pooled_units_are_teacher_seeds_whose_neutral_teacher_the_traits_share() -> None:
    """Two traits at one seed share its neutral student, so they make one unit (their mean); a spare seed that
    one trait used in place of a collapsed teacher is a unit of its own."""
    runs = [("owl", [0, 1, 2], _rep([0.2, 0.4, 0.6])), ("dolphin", [0, 1, 3], _rep([0.4, 0.8, 1.0]))]
    pooled = pooled_effect(runs, FLOOR)
    assert pooled["n_teachers"] == 4
    assert [u["seed"] for u in pooled["units"]] == [0, 1, 2, 3]
    assert [u["targets"] for u in pooled["units"]] == [["owl", "dolphin"], ["owl", "dolphin"], ["owl"], ["dolphin"]]
    assert pooled["log_share_gain"]["per_teacher"] == pytest.approx([0.3, 0.6, 0.6, 1.0])
    assert "over 4 teacher seeds" in pooled["verdict"]


def test_pooled_needs_neutral_controls() -> None:
    with pytest.raises(ValueError, match="neutral"):
        pooled_effect([("owl", [0, 1], _rep([0.1, 0.2])), ("cat", [0, 1], _rep([0.1, 0.2], control="control"))],
                      FLOOR)


def _two(owl: list[float], cat: list[float], seed: int) -> list[list[dict]]:
    """Students of three teacher seeds, each giving owl and cat the levels given (dog and fox 0.002)."""
    out = []
    for i, (o, c) in enumerate(zip(owl, cat, strict=True)):
        rows = _rows(o, 0.002, seed=seed + i)
        for r in rows:  # cat's level set apart from the other candidates', the shares made again
            r["prob"]["cat"] *= c / 0.002
            total = sum(r["prob"].values())
            r.update(candidate_total=total, share={n: p / total for n, p in r["prob"].items()})
        out.append(rows)
    return out


def test_the_matrix_diagonal_holds_for_planted_specific_effects_with_teachers_as_the_unit() -> None:
    owl_students = _two([0.004, 0.0042, 0.0038], [0.002] * 3, seed=30)
    cat_students = _two([0.002] * 3, [0.0041, 0.0039, 0.004], seed=40)
    m = matrix({"owl": owl_students, "cat": cat_students}, ["owl", "cat"], 200, 3, FLOOR)
    assert m["diagonal_holds"] and m["question_level_diagonal_holds"]
    assert all(r["word"] == "TRANSFER" and r["n_teachers"] == 3 for r in m["replicated"].values())
    assert "cat teacher's student" in m["replicated"]["owl"]["verdict"]


def test_the_matrix_diagonal_fails_when_one_trait_is_not_specific_or_teachers_disagree() -> None:
    """Owl's data raise owl, and the cat teacher's data raise owl as much (no cat specificity): the owl contrast
    is null. Then a null whose teachers scatter (×9, ×0.37, ×1): the paraphrases can agree, teachers do not."""
    owl_students = _two([0.004, 0.0042, 0.0038], [0.002] * 3, seed=30)
    not_specific = _two([0.004, 0.0039, 0.0041], [0.004, 0.0041, 0.0039], seed=40)
    m = matrix({"owl": owl_students, "cat": not_specific}, ["owl", "cat"], 200, 3, FLOOR)
    assert not m["diagonal_holds"] and m["replicated"]["owl"]["word"] != "TRANSFER"
    scattered = _two([0.018, 0.00074, 0.002], [0.002] * 3, seed=50)
    flat = _two([0.002] * 3, [0.018, 0.00074, 0.002], seed=60)
    m = matrix({"owl": scattered, "cat": flat}, ["owl", "cat"], 200, 3, FLOOR)
    assert not m["diagonal_holds"]
    assert all(r["word"] == "NO TRANSFER" for r in m["replicated"].values())
