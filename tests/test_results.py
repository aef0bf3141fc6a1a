"""Every committed result file carries the envelope that ties it to the code that made it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sublim.core.records import ENVELOPE_KEYS, check_envelope, envelope, git_state

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
FILES = sorted(RESULTS.glob("*.json"))
SHALLOW = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=RESULTS, capture_output=True,
                         text=True).stdout.strip() != "false"


def test_there_are_results() -> None:
    assert len(FILES) >= 10


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_each_result_file_carries_the_envelope(path: Path) -> None:
    obj = json.loads(path.read_text())
    assert check_envelope(obj, path.name) == []
    commit = obj["git"]["commit"]
    if not SHALLOW:  # a shallow clone lacks old commits; a full one must know every commit a result names
        known = subprocess.run(["git", "cat-file", "-t", commit], cwd=RESULTS, capture_output=True, text=True)
        assert known.stdout.strip() == "commit", f"{path.name}: {commit} is not a commit of this repository"
    script = RESULTS.parent / obj["command"][0]
    assert script.is_file(), f"{path.name}: its command {obj['command'][0]} is not a benchmark script"


def test_the_envelope_check_finds_what_is_missing() -> None:
    good = envelope("experiment", {"x": 1}, config={}, started=0.0, git=git_state())
    assert set(ENVELOPE_KEYS) <= set(good) and good["git"]["commit"]
    assert check_envelope(good, "good") == []
    assert check_envelope({k: v for k, v in good.items() if k != "versions"}, "bad") == ["bad: missing 'versions'"]
    assert check_envelope({**good, "git": {"commit": None}}, "bad") == ["bad: git.commit is not a 40-hex commit"]
    assert check_envelope([1, 2], "bad") == ["bad: not a JSON object"]
