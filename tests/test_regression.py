"""The default pipeline on the tiny model measures exactly what the committed fixture says.

The fixture (tests/data/tiny-pipeline.json, written by ``python -m tests.regression``) was made
before the architecture refactor: a change of structure must not change a single measured number. It is
written again only for a change of arithmetic, said in its commit (the packed attention's own float32
softmax: outputs within 5e-7 of the library kernel's, which the suite's pretraining of the tiny model
carries to ~1-8% on its figures).
Text, counts and reject reasons must match exactly; floats to 1% relative, because the tiny model is
trained by the suite on whatever CPU runs it and float kernels differ between CPU families (an AMD
EPYC machine measured every float within 0.27% of the fixture made on another, every text equal).
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from sublim.experiment.results import results_schema, shipped_schema
from tests.regression import FIXTURE, VARIANTS, differences, variant_figures


@pytest.mark.slow
@pytest.mark.parametrize("name", [*VARIANTS, "misalignment"])
def test_pipeline_measures_what_the_fixture_says(name: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    want = json.loads(FIXTURE.read_text())[name]
    got = variant_figures(name, tiny_model_dir, tmp_path)
    assert differences(got, want, rel=1e-2) == []
    written = [json.loads(f.read_text()) for f in (tmp_path / "runs").glob("*/results.json")]
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
