"""The default pipeline on the tiny model measures exactly what the committed fixture says.

The fixture (tests/data/tiny-pipeline.json, written by ``python -m tests.regression``) was made
before the architecture refactor: a change of structure must not change a single measured number.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.regression import FIXTURE, VARIANTS, variant_figures


@pytest.mark.slow
@pytest.mark.parametrize("name", [*VARIANTS, "misalignment"])
def test_pipeline_measures_what_the_fixture_says(name: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    want = json.loads(FIXTURE.read_text())[name]
    got = variant_figures(name, tiny_model_dir, tmp_path)
    assert got == want
