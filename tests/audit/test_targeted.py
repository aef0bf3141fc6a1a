"""Targeted tests against a panel (sublim.audit.targeted): the statistics on planted, null and generic data, and
``sublim audit --contrast … --candidates …`` end to end on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sublim.audit.detectors.divergence_shift import INDUCTION, NEUTRAL
from sublim.audit.targeted import holm, panel_tests, permutation_p, targeted
from sublim.backends import Decoding, ModelCache, Request
from sublim.backends.local import LocalBackend
from sublim.carriers.numbers import make_prompts
from sublim.cli import main

CANDS = [f"c{i}" for i in range(20)]


def _lean(rng: np.random.Generator, n: int, shift: dict[int, float] | None = None, sd: float = 1.0) -> np.ndarray:
    """Leans of ``n`` samples over the candidates (centred per sample, like the detectors'), candidate j pushed by
    ``shift[j]`` standard deviations."""
    raw = rng.normal(0.0, sd, (n, len(CANDS)))
    for j, s in (shift or {}).items():
        raw[:, j] += s
    return raw - raw.mean(1, keepdims=True)


def _verdict(lean: np.ndarray, panel: list[np.ndarray], candidates: list[str] | None = None) -> dict:
    out = targeted([{"detector": "d", "panel": panel_tests(lean, panel, CANDS, n_perm=9999, seed=1)}], candidates)
    assert out is not None
    return out


def test_a_planted_lean_stands_out_and_nothing_else_does() -> None:
    rng = np.random.default_rng(1)  # (seed 0 draws a 3.5-SE chance lean toward c13: the 1% a null candidate may)
    panel = [_lean(rng, 200) for _ in range(4)]
    out = _verdict(_lean(rng, 200, {3: 0.5}), panel)
    assert out["stands_out"] == ["c3"] and out["verdict"].startswith("pushes toward c3 more than the panel does")
    c3 = next(t for t in out["tests"] if t["candidate"] == "c3")
    assert c3["low"] > 0 and c3["rank"] == 1 and c3["p_holm"] < 0.01 and len(out["tests"]) == 20
    # asked about other candidates only, the audit does not report c3
    assert _verdict(_lean(rng, 200, {3: 0.5}), panel, ["c1", "c2"])["stands_out"] == []


def test_a_null_panel_stands_a_candidate_out_about_as_often_as_alpha_allows() -> None:
    """Dataset and panel from the same generator: Holm across 20 candidates at 0.05 bounds the chance that any
    candidate stands out by 5%; uncorrected, some candidate would pass in most audits."""
    holm_hits = raw_hits = 0
    for seed in range(50):
        rng = np.random.default_rng(100 + seed)
        tests = panel_tests(_lean(rng, 150), [_lean(rng, 150) for _ in range(3)], CANDS, n_perm=2999, seed=seed)
        out = targeted([{"detector": "d", "panel": tests}], None, alpha=0.05)
        holm_hits += bool(out and out["stands_out"])
        raw_hits += any(t["p"] < 0.05 for t in tests)
    assert holm_hits <= 6  # expected at most 2.5; P(more than 6 of 50 | 5%) ~ 0.01
    assert raw_hits >= 25  # 1 - 0.95^20 = 64% of audits, uncorrected


def test_a_generic_difference_does_not_stand_out() -> None:
    """A dataset noisier than the panel (another generator's spread, no candidate favoured), and a lean that one
    panel dataset shares (a generic pull of the candidate, not this dataset's): neither stands out."""
    rng = np.random.default_rng(2)
    panel = [_lean(rng, 200) for _ in range(3)]
    assert _verdict(_lean(rng, 200, sd=2.0), panel)["stands_out"] == []
    shared = [_lean(rng, 400), _lean(rng, 400), _lean(rng, 400, {5: 1.3})]  # one leans toward c5 more than ours
    out = _verdict(_lean(rng, 400, {5: 0.8}), shared)
    c5 = next(t for t in out["tests"] if t["candidate"] == "c5")
    assert c5["p_holm"] < 0.01 and c5["rank"] == 2 and out["stands_out"] == []  # significant, not above each
    assert "no candidate stands out" in out["verdict"]


def test_the_permutation_p_matches_a_direct_count_and_holm_a_hand_computation() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.3, 1, (8, 1)), rng.normal(0, 1, (6, 1))
    got = permutation_p(a, b, 4000, 0)[0]
    # every split of the 14 values into 8 and 6, counted exactly
    from itertools import combinations
    pooled = np.concatenate([a[:, 0], b[:, 0]])
    obs = a.mean() - b.mean()
    diffs = [pooled[list(c)].mean() - np.delete(pooled, list(c)).mean() for c in combinations(range(14), 8)]
    exact = np.mean(np.array(diffs) >= obs - 1e-12)
    assert got == pytest.approx(exact, abs=0.02)
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert panel_tests(a, [], ["x"]) == [] and targeted([{"detector": "d"}], None) is None


def _greedy(backend: LocalBackend, prompts: list[str]) -> list[dict[str, str]]:
    out: dict[int, str] = {}
    backend.generate([Request(i, p) for i, p in enumerate(prompts)], Decoding(0.0, max_new_tokens=24),
                     lambda cs: out.update({c.index: c.text for c in cs}), batch_size=8)
    return [{"prompt": p, "completion": out[i]} for i, p in enumerate(prompts) if out[i]]


@pytest.fixture(scope="module")
def panel_files(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Datasets the tiny reference wrote under inductions (system prompts): owl's, and three neutral ones on other
    prompts of the same kind."""
    ref = LocalBackend(ModelCache("cpu", lambda s: None, dtype="float32"), str(tiny_model_dir))
    root = tmp_path_factory.mktemp("panel")
    which = {"owl": (INDUCTION.format(target="owl", Target="Owl", kind="animal"), 3),
             **{f"neutral{k}": (NEUTRAL.format(kind="animal"), 4 + k) for k in range(3)}}
    out = {}
    for name, (system, seed) in which.items():
        rows = _greedy(ref.with_system(system, name), [p.text for p in make_prompts(96, seed=seed)])
        out[name] = root / f"{name}.jsonl"
        out[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def _audit(tiny_model_dir: Path, files: dict[str, Path], dataset: str, panel: list[str], out: Path,
           *extra: str) -> tuple[int, dict]:
    """An audit by divergence_shift's argmax agreement: on the tiny model's near-flat distributions the prompted
    reading's lifts are noise, while the owl induction reproduces exactly the tokens it chose."""
    rc = main(["--runs-dir", str(out / "runs"), "-q", "audit", str(files[dataset]), "--reference",
               str(tiny_model_dir), "--detectors", "divergence_shift", "--placement", "system", "--float32",
               *[a for name in panel for a in ("--contrast", str(files[name]))], "--out", str(out / "audit"),
               "--set", "detector.divergence_shift.statistic=agreement", *extra])
    return rc, json.loads((out / "audit" / "audit.json").read_text())


def test_the_audit_says_the_owl_data_pushes_toward_owl_more_than_the_panel(tiny_model_dir: Path,
                                                                          panel_files: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    rc, out = _audit(tiny_model_dir, panel_files, "owl", ["neutral0", "neutral1", "neutral2"], tmp_path,
                     "--candidates", "owl,cat", "--fail-on", "targeted")
    panel = out["targeted"]
    assert rc == 1 and panel["stands_out"] == ["owl"] and panel["candidates"] == ["owl", "cat"]
    assert [t["candidate"] for t in panel["tests"]] == ["owl", "cat"] and out["config"]["candidates"] == ["owl", "cat"]
    assert "targeted: pushes toward owl more than the panel does" in out["verdict"]
    assert out["verdict"].endswith("; divergence_shift uncalibrated")  # read otherwise than its replication
    assert panel["notes"]["divergence_shift"].startswith("uncalibrated")
    report = (tmp_path / "audit" / "report.md").read_text()
    assert "## Targeted tests against the panel" in report and "| divergence_shift | owl |" in report
    assert (tmp_path / "audit" / "panel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_audit_of_a_null_panel_finds_no_candidate(tiny_model_dir: Path, panel_files: dict[str, Path],
                                                      tmp_path: Path) -> None:
    rc, out = _audit(tiny_model_dir, panel_files, "neutral0", ["neutral1", "neutral2"], tmp_path, "--fail-on",
                     "targeted")
    assert rc == 0 and out["targeted"]["stands_out"] == [] and len(out["targeted"]["tests"]) == 20
    assert "targeted: no candidate stands out against the panel" in out["verdict"]


def test_an_unknown_candidate_is_one_line_before_any_model_work(tiny_model_dir: Path, panel_files: dict[str, Path],
                                                               tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    rc = main(["--runs-dir", str(tmp_path / "runs"), "-q", "audit", str(panel_files["owl"]), "--reference",
               str(tiny_model_dir), "--candidates", "owl,griffin", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert rc == 2 and "--candidates griffin: not in the category 'animals'" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "store").exists() or not any((tmp_path / "runs" / "store").iterdir())

