"""Every committed result file carries the envelope that ties it to the code that made it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sublim.core.records import ENVELOPE_KEYS, check_envelope, cpu_identity, envelope, git_state

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


def test_a_dirty_tree_records_its_diff(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    assert git_state(tmp_path) == {"commit": git_state(tmp_path)["commit"], "dirty": False}
    (tmp_path / "code.py").write_text("x = 2\n")
    state = git_state(tmp_path)
    assert state["dirty"] is True and "-x = 1" in state["diff"] and "+x = 2" in state["diff"]


def test_a_results_file_written_by_an_earlier_benchmark_is_listed_not_dirty(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "a.json").write_text("{}\n")
    data = tmp_path / "benchmarks" / "data" / "search"
    data.mkdir(parents=True)
    (data / "readings.jsonl").write_text("")
    (data / "dataset.jsonl").write_text('{"n": 1}\n')
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    (results / "a.json").write_text('{"figure": 2}\n')
    (data / "readings.jsonl").write_text('{"reading": 1}\n')  # an earlier sitting's reading
    state = git_state(results)  # asked from inside the results folder: the whole tree is still what counts
    assert state["dirty"] is False and "diff" not in state
    assert state["results_changed"] == ["benchmarks/data/search/readings.jsonl", "benchmarks/results/a.json"]
    (data / "dataset.jsonl").write_text('{"n": 2}\n')  # a benchmark's input data changed: that is dirty
    state = git_state(tmp_path)
    assert state["dirty"] is True and '+{"n": 2}' in state["diff"] and "reading" not in state["diff"]
    (tmp_path / "code.py").write_text("x = 2\n")
    state = git_state(tmp_path)
    assert state["dirty"] is True and "+x = 2" in state["diff"] and "figure" not in state["diff"]


def test_a_benchmark_block_writes_its_envelope_and_a_failed_one_writes_nothing(tmp_path: Path) -> None:
    from sublim.core.records import benchmark

    with benchmark("demo", tmp_path / "ok.json", config={"n": 3}, command=["demo.py"]) as out:
        out["figure"] = 1.5
    got = json.loads((tmp_path / "ok.json").read_text())
    assert not check_envelope(got, "ok.json") and got["results"] == {"figure": 1.5} and got["kind"] == "demo"
    with pytest.raises(RuntimeError), benchmark("demo", tmp_path / "failed.json", config={}) as out:
        out["figure"] = 2.0
        raise RuntimeError("half-way")
    assert not (tmp_path / "failed.json").exists()


def test_the_machine_record_names_the_cpu_and_its_matmul_flags() -> None:
    text = ("processor\t: 0\nmodel name\t: AMD EPYC\ncpu family\t: 26\nmodel\t\t: 2\n"
            "flags\t\t: fpu avx2 avx512f avx512_bf16 sse4_2\n\nprocessor\t: 1\nmodel name\t: other\n")
    assert cpu_identity(text) == {"cpu_model": "AMD EPYC", "cpu_family": "26", "cpu_model_number": "2",
                                  "cpu_flags": ["avx2", "avx512f", "avx512_bf16"]}
    no_bf16 = cpu_identity(text.replace(" avx512_bf16", ""))
    assert no_bf16["cpu_flags"] == ["avx2", "avx512f"]
    assert cpu_identity("") == {}

