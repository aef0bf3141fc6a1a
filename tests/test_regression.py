"""The default pipeline on the tiny model measures exactly what the committed fixture says.

The fixture (tests/data/tiny-pipeline.json, written by ``python -m tests.regression``) was first made
before the architecture refactor: a change of structure must not change a single measured number. It is
written again only for a change of arithmetic, said in its commit. Both the fixture and this test
measure in a fresh process pinned to kernels that do not depend on the CPU (see tests/regression.py):
unpinned, the fixture made on an AVX-512 machine failed on an AVX2 one (other sampled texts), and
one thread against two changed it too. Pinned, texts, counts and reject reasons must match exactly and
floats to 1e-6 relative (the same code should give the same bits; the margin is for a libm).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from sublim.experiment.results import results_schema, shipped_schema
from tests.regression import FIXTURE, VARIANTS, differences, measure


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    work = tmp_path_factory.mktemp("regression")
    return work, measure(work)


@pytest.mark.slow
@pytest.mark.parametrize("name", [*VARIANTS, "misalignment"])
def test_pipeline_measures_what_the_fixture_says(name: str, measured: tuple[Path, dict[str, Any]]) -> None:
    work, got = measured
    want = json.loads(FIXTURE.read_text())[name]
    assert differences(got[name], want, rel=1e-6) == []
    written = [json.loads(f.read_text()) for f in (work / name / "runs").glob("*/results.json")]
    assert len(written) == 1 and written[0]["kind"] == ("misalignment" if name == "misalignment" else "preference")
    validator = jsonschema.Draft202012Validator(shipped_schema())
    assert list(validator.iter_errors(written[0])) == []  # the results file a reader gets has the shipped shape
    broken = {**written[0], "replicated": {**written[0]["replicated"], "n_teachers": "three"}}
    assert list(validator.iter_errors(broken))


def test_the_shipped_schema_is_the_results_models_schema() -> None:
    assert shipped_schema() == results_schema(), "write it again: see sublim.experiment.results.shipped_schema"


def test_differences_sees_a_changed_text_count_or_float() -> None:
    want = {"a": [1.0, 2.0], "t": "x", "n": 3}
    assert differences({"a": [1.001, 2.0], "t": "x", "n": 3}, want, rel=1e-2) == []
    assert differences({"a": [1.1, 2.0], "t": "x", "n": 3}, want, rel=1e-2) == ["a[0]: 1.1 != 1.0"]
    assert differences({"a": [1.0, 2.0], "t": "y", "n": 3}, want, rel=1e-2) == ["t: 'y' != 'x'"]
    assert differences({"a": [1.0, 2.0], "t": "x", "n": 4}, want, rel=1e-2) == ["n: 4 != 3"]
    assert differences({"a": [1.0], "t": "x", "n": 3}, want, rel=1e-2) == ["a: 1 items != 2"]
    assert differences({"a": [1.0, 2.0], "t": "x"}, want, rel=1e-2) == [": keys differ: ['n']"]
