"""Sweeps on the tiny model: the grid, the in-process executor, and Ray (a local cluster started here) with two
sweeps over one store at once and a worker killed mid-stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from sublim import api
from sublim.cli import main as cli_main
from sublim.core.errors import SublimError
from sublim.core.files import read_jsonl
from sublim.sweep import expand, load_sweep, run_sweep
from tests.helpers import tiny_config_text

SWEEP = 'name = "pair"\nbase = "tiny.toml"\nseeds = [0, 1]\n[axes]\n"trait.target" = ["owl", "dolphin"]\n'


def _write(tmp: Path, model_dir: Path, **generation: Any) -> Path:
    (tmp / "tiny.toml").write_text(tiny_config_text(model_dir, prompts={"n": 240},
                                                    generation={"until_kept": 12, "batch_size": 4, **generation}))
    (tmp / "sweep.toml").write_text(SWEEP)
    return tmp / "sweep.toml"


def test_the_grid_is_the_product_of_the_axes_and_seeds(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = _write(tmp_path, tiny_model_dir)
    runs = expand(load_sweep(path), tmp_path)
    assert [r.point for r in runs] == [{"trait.target": t, "seed": s} for t in ("owl", "dolphin") for s in (0, 1)]
    assert [(r.config.trait.target, r.config.arms.seeds) for r in runs] == [
        ("owl", [0]), ("owl", [1]), ("dolphin", [0]), ("dolphin", [1])]
    with pytest.raises(SublimError, match="run trait.target=unicorn, seed=0: .*not a candidate"):
        expand(load_sweep(path, ['axes={"trait.target" = ["owl", "unicorn"]}']), tmp_path)
    with pytest.raises(SublimError, match="needs an \\[axes\\] table or a seeds list"):
        load_sweep(path, ["axes={}", "seeds=[]"])


def _builds(runs: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (runs / "store" / "builds.jsonl").read_text().splitlines()]


def _units(sweep: dict[str, Any]) -> Any:
    return json.loads(json.dumps(sweep["data"]["series"]))


def _samples(runs: Path) -> dict[str, list[dict[str, Any]]]:
    return {p.parent.name: read_jsonl(p) for p in sorted((runs / "store").glob("generate-*/samples.jsonl"))}


@pytest.fixture
def one_thread() -> Any:
    """Ray workers run torch on one thread each; the in-process reference does too, so floats match."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_ray_sweeps_at_once_with_a_killed_worker_match_the_in_process_sweep(
        tiny_model_dir: Path, tmp_path: Path, one_thread: None) -> None:
    import ray  # a test dependency (sublim[test])

    path = _write(tmp_path, tiny_model_dir)
    sweep = load_sweep(path)
    reference = run_sweep(sweep, tmp_path / "local", executor="local", where=tmp_path, progress=False,
                          echo=lambda s: None)
    assert reference["executor"] == "local" and len(reference["runs"]) == 4
    local_builds = _builds(tmp_path / "local")
    assert max(Counter(b["key"] for b in local_builds).values()) == 1
    assert Counter(b["stage"] for b in local_builds)["teacher"] == 3  # owl, dolphin and neutral teachers for four runs

    runs = tmp_path / "ray"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        address = ray.get_runtime_context().gcs_address
        got: dict[str, Any] = {}
        first = threading.Thread(target=lambda: got.update(first=run_sweep(
            sweep, runs, executor="ray", where=tmp_path, progress=False, echo=lambda s: None)))
        first.start()
        second = subprocess.Popen([sys.executable, "-m", "sublim.cli", "--runs-dir", str(runs), "-q", "sweep",
                                   str(path), "--executor", "ray", "--address", address],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        killed, stage_dir = _kill_a_worker_mid_generation(runs, deadline=time.time() + 240)
        out, _ = second.communicate(timeout=600)
        first.join(600)
    finally:
        ray.shutdown()
    assert second.returncode == 0, out[-3000:]
    assert killed, "no generation stage was seen running in a Ray worker"
    builds = _builds(runs)
    counts = Counter(b["key"] for b in builds)
    assert max(counts.values()) == 1  # two sweeps, one store: every stage computed once
    assert set(counts) == {b["key"] for b in local_builds}  # the same stages as the in-process sweep
    taken_over = [b for b in builds if f"{b['stage']}-{b['key'][:16]}" == stage_dir]
    assert len(taken_over) == 1 and taken_over[0]["pid"] != killed  # another worker finished the killed one's stage
    for name, rows in _samples(runs).items():
        assert len({r["index"] for r in rows}) == len(rows)  # nothing duplicated
        assert rows == _samples(tmp_path / "local")[name]  # nothing lost or changed
    assert _units(got["first"]) == _units(reference)
    sweeps = list((runs / "sweeps").glob("*/sweep.json"))
    assert len(sweeps) == 1 and _units(json.loads(sweeps[0].read_text())) == _units(reference)
    assert (sweeps[0].parent / "matrix.png").is_file() and (sweeps[0].parent / "chart.png").is_file()


def _kill_a_worker_mid_generation(runs: Path, deadline: float) -> tuple[int | None, str]:
    """SIGKILL the Ray worker holding a generation stage's claim once that stage has written a batch."""
    while time.time() < deadline:
        for claim in (runs / "store").glob("generate-*.claim"):
            try:
                holder = json.loads(claim.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            samples = claim.with_name(claim.name[: -len(".claim")]) / "samples.jsonl"
            if holder.get("pid") != os.getpid() and samples.is_file() and samples.stat().st_size > 0:
                try:
                    os.kill(holder["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    continue
                return int(holder["pid"]), claim.name[: -len(".claim")]
        time.sleep(0.02)
    return None, ""


def test_without_ray_the_sweep_runs_in_process_and_says_how_to_get_ray(
        tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    path = _write(tmp_path, tiny_model_dir)
    said: list[str] = []
    out = run_sweep(load_sweep(path, ["seeds=[0]"]), tmp_path / "runs", where=tmp_path, progress=False,
                    echo=said.append)
    assert out["executor"] == "local" and len(out["runs"]) == 2
    assert any("pip install 'sublim[ray]'" in s for s in said)
    for manifest in (tmp_path / "runs" / "store").glob("generate-*/manifest.json"):
        work = json.loads(manifest.read_text())["work"]  # each stage records its model work (for throughput)
        assert work["decode"]["tokens"] > 0 and work["prefill"]["flops"] > 0
    series = out["data"]["series"]["all runs"]
    assert series["targets"] == ["owl", "dolphin"] and set(series["share_gain_matrix"]["owl"]) == {"owl", "dolphin"}
    pooled = out["data"]["pooled"]["all runs"]  # one teacher seed, shared by both animals: one unit
    assert pooled["targets"] == ["owl", "dolphin"] and pooled["n_teachers"] == 1 and pooled["word"] == "UNREPLICATED"
    assert any(s.startswith("pooled (all runs): UNREPLICATED") for s in said)
    with pytest.raises(SublimError, match="needs Ray"):
        run_sweep(load_sweep(path), tmp_path / "runs", executor="ray", where=tmp_path, progress=False)


def test_every_example_sweep_expands() -> None:
    root = Path(__file__).resolve().parents[1] / "examples" / "sweeps"
    sweeps = sorted(root.glob("*.toml"))
    assert sweeps
    for path in sweeps:
        assert len(expand(load_sweep(path), root)) >= 2, path.name


def test_a_failed_run_is_reported_and_the_others_finish(tiny_model_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A teacher whose data all fail the filter (here: one new token, so no sample ends) stops its run, not
    the sweep: the other run finishes, and the failure is named in sweep.json, the report and the CLI's exit."""
    path = _write(tmp_path, tiny_model_dir)
    path.write_text('name = "broken"\nbase = "tiny.toml"\n[axes]\n"generation.max_new_tokens" = [40, 1]\n')
    runs = tmp_path / "runs"
    out = api.run_sweep(load_sweep(path), runs, executor="local", where=tmp_path, progress=False,
                        echo=lambda s: None)
    assert [r["point"] for r in out["runs"]] == [{"generation.max_new_tokens": 40}]
    assert [f["point"] for f in out["failed_runs"]] == [{"generation.max_new_tokens": 1}]
    assert "empty after filtering" in out["failed_runs"][0]["error"]
    assert out["data"]["series"] and out["runs"][0]["replicated"]["n_teachers"] == 1
    report = next((runs / "sweeps").glob("broken-*/report.md")).read_text()
    assert "## Failed runs" in report and out["failed_runs"][0]["run_id"] in report
    assert cli_main(["--runs-dir", str(runs), "sweep", str(path), "--executor", "local"]) == 2
    assert "1 of the sweep's runs failed" in capsys.readouterr().err
