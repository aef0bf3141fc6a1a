"""The whole experiment on the tiny model: artifacts, caching, resume after a kill, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sublim.api import run_experiment
from sublim.core.config import load_config
from sublim.core.errors import SublimError
from sublim.core.files import read_jsonl
from tests.helpers import tiny_config_text


def _cfg(tmp_path: Path, model_dir: Path, overrides: list[str] | None = None, **sections):
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_config_text(model_dir, **sections))
    return load_config(str(path), overrides or [])


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("pipeline")
    cfg = _cfg(tmp, tiny_model_dir, ["student.method=distill_restricted", "arms.teacher_seeds=[0, 1]"])
    runs = tmp / "runs"
    lines: list[str] = []
    res = run_experiment(cfg, runs, progress=False, echo=lines.append)
    return cfg, runs, res, lines


def test_run_writes_results_chart_report_and_manifests(finished_run):
    cfg, runs, res, _ = finished_run
    run_dir = runs / res["run_id"]
    for name in ("results.json", "chart.png", "report.md", "config.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk["config_hash"] == cfg.config_hash()
    assert set(on_disk["arms"]) >= {"base", "teacher-owl", "teacher-neutral", "student-owl", "student-neutral"}
    assert "student-control" not in on_disk["arms"]  # distilled from the base, it would be the base arm itself
    for m in ("prob", "share"):
        eff = on_disk["effect"][m]["pooled"]
        assert eff["difference"]["value"] == pytest.approx(eff["treated_mean"] - eff["control_mean"])
        assert eff["difference"]["low"] <= eff["difference"]["value"] <= eff["difference"]["high"]
        assert eff["wilcoxon_method"] in ("exact", "exact permutation (ties)", "Monte Carlo permutation (ties)")
    assert on_disk["verdict"] and "\n" not in on_disk["verdict"]
    cloze = on_disk["cloze"]  # the question set has cloze stems: every arm is scored after them too
    assert set(cloze["arms"]) == set(on_disk["arms"]) and cloze["stems"]
    assert cloze["replicated"]["n_teachers"] == 2 and cloze["replicated"]["control"] == "neutral"
    assert all(0 < a["candidate_total"] <= 1 for a in cloze["arms"].values())
    assert len(list((runs / "store").glob("cloze-*/per_question.jsonl"))) == len(
        list((runs / "store").glob("evaluate-*/per_question.jsonl")))
    assert on_disk["filter"]["owl"]["total"] == cfg.prompts.n
    manifests = list((runs / "store").glob("*/manifest.json"))
    assert len(manifests) >= 8
    gen = [json.loads(m.read_text()) for m in manifests if m.parent.name.startswith("generate-")]
    assert all("model_fingerprint" in g and g["inputs"]["prompts"] for g in gen)
    assert all(g["versions"]["torch"] for g in gen)
    report = (run_dir / "report.md").read_text()
    assert "owl" in report
    # the training curves and the filter's record as charts: every teacher's and student's loss at every step
    from sublim.report.training import training_curves
    curves = training_curves(run_dir)
    assert len(curves["teachers"]) == 4 and len(curves["students"]) == 4  # owl and neutral of 2 teacher seeds
    steps = {json.loads(m.read_text())["train_log"]["steps"] for m in manifests if m.parent.name.startswith("teacher-")}
    assert {len(v) for v in curves["teachers"].values()} == steps
    for png in ("training.png", "filter.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in report
    links = list((run_dir / "artifacts").rglob("*"))
    assert any(p.is_symlink() for p in links)


def test_every_teacher_seed_is_its_own_teacher_data_and_students_paired_with_a_neutral_teacher(finished_run):
    """Two teacher seeds: two owl teachers and two neutral teachers, four datasets from one prompt set, each
    with its student; the verdict pairs them by teacher seed and says how many pairs it rests on."""
    _, runs, res, _ = finished_run
    assert res["teacher_seeds"] == [0, 1] and res["control_arm"] == "student-neutral"
    for arm in ("teacher-owl", "teacher-neutral", "student-owl", "student-neutral"):
        assert res["arms"][arm]["n_runs"] == 2, arm
    assert set(res["filter"]) == {"owl", "owl t1", "neutral", "neutral t1"}
    stages = res["stages"]
    assert {"train/student-owl seed 0", "train/student-owl t1 seed 0", "train/student-neutral t1 seed 0"} <= set(stages)
    teachers = {stages[k]["key"] for k in stages if k.startswith("teacher/")}
    assert len(teachers) == 4
    assert len({stages[k]["key"] for k in stages if k.startswith("prompts/")}) == 1
    rep = res["replicated"]
    assert rep["n_teachers"] == 2 and rep["control"] == "neutral"
    assert len(rep["log_share_gain"]["per_teacher"]) == 2
    assert rep["log_share_gain"]["low"] <= rep["log_share_gain"]["mean"] <= rep["log_share_gain"]["high"]
    assert rep["word"] in ("TRANSFER", "GENERIC SHIFT", "NO TRANSFER")
    assert res["verdict"].startswith(rep["word"]) and "over 2 teacher pairs" in res["verdict"]
    assert res["question_level"].startswith("question level")


def test_a_teacher_seed_whose_data_fall_short_is_replaced_by_a_spare_pair(finished_run, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    """With a spare teacher seed, a pair whose trait teacher's data keep fewer examples than needed (here: made
    to keep none) is replaced whole by the spare's pair; the results say which seed and why, and the verdict
    still rests on the planned number of pairs."""
    import dataclasses
    import shutil

    from sublim.experiment import runner

    cfg, shared, _, _ = finished_run
    runs = tmp_path / "runs"  # the seeds already made come from the shared store's copy; the fixture stays as it was
    shutil.copytree(shared, runs, symlinks=True)
    real = runner.filtered

    def owl_t1_short(ctx, gen, label, *args, **kwargs):  # type: ignore[no-untyped-def]
        art = real(ctx, gen, label, *args, **kwargs)
        if not label.startswith("owl t1 "):
            return art
        return dataclasses.replace(art, manifest={**art.manifest, "filter": {**art.manifest["filter"], "kept": 0}})

    monkeypatch.setattr(runner, "filtered", owl_t1_short)
    spare = load_config(str(shared.parent / "tiny.toml"), ["student.method=distill_restricted",
                                                        "arms.teacher_seeds=[0, 1]", "arms.spare_teacher_seeds=[2]"])
    lines: list[str] = []
    res = run_experiment(spare, runs, progress=False, echo=lines.append)
    assert res["teacher_seeds"] == [0, 2]
    assert list(res["replaced_teacher_seeds"]) == ["1"]
    assert "the owl teacher's data keep 0 of the" in res["replaced_teacher_seeds"]["1"]
    assert any("teacher seed 1:" in line and "seed 2 replaces it" in line for line in lines)
    assert set(res["filter"]) == {"owl", "neutral", "owl t2", "neutral t2"}
    for arm in ("teacher-owl", "teacher-neutral", "student-owl", "student-neutral"):
        assert res["arms"][arm]["n_runs"] == 2, arm
    assert res["replicated"]["n_teachers"] == 2 and "over 2 teacher pairs" in res["verdict"]
    assert cfg.config_hash() != spare.config_hash()
    report = (runs / res["run_id"] / "report.md").read_text()
    assert "teacher seed 1 replaced by a spare seed: the owl teacher's data keep 0" in report


def test_teacher_replay_adds_the_base_models_own_carrier_answers_to_every_teacher(finished_run, tmp_path: Path):
    """teacher.replay = 3: one replay dataset (the base model's kept answers to prompts drawn with another seed),
    whose first three rows end the owl and the neutral teacher's training data alike; the teachers are new, the
    students' prompts are the run's own. At 0 the setting leaves the run id as it was."""
    import shutil

    cfg, shared, res0, _ = finished_run
    runs = tmp_path / "runs"
    shutil.copytree(shared, runs, symlinks=True)
    toml = str(shared.parent / "tiny.toml")
    plain = ["student.method=distill_restricted", "arms.teacher_seeds=[0, 1]"]
    assert load_config(toml, [*plain, "teacher.replay=0"]).config_hash() == cfg.config_hash()
    res = run_experiment(load_config(toml, ["student.method=distill_restricted", "teacher.replay=3"]), runs,
                         progress=False, echo=lambda s: None)
    stages = res["stages"]
    replay = [k for k in stages if k.startswith("filter/replay")]
    assert replay == ["filter/replay numbers"]
    replayed = read_jsonl(Path(stages[replay[0]]["path"]) / "dataset.jsonl")[:3]
    assert len(replayed) == 3
    students_prompts = {r["prompt"] for r in read_jsonl(Path(stages["prompts/24 numbers prompts"]["path"])
                                                         / "prompts.jsonl")}
    assert {r["prompt"] for r in replayed}.isdisjoint(students_prompts)
    for name in ("teacher/owl (fine-tuned)", "teacher/neutral (fine-tuned)"):
        rows = read_jsonl(Path(stages[name]["path"]) / "train.jsonl")
        assert len(rows) == 48 + 3 and rows[48:] == [{"prompt": r["prompt"], "completion": r["completion"]}
                                                     for r in replayed], name
        assert stages[name]["key"] != res0["stages"][name]["key"], name
    assert stages["prompts/24 numbers prompts"]["key"] == res0["stages"]["prompts/24 numbers prompts"]["key"]


def test_teacher_replay_beyond_what_the_base_model_keeps_is_one_clear_error(tiny_model_dir: Path, tmp_path: Path):
    cfg = _cfg(tmp_path, tiny_model_dir, ["teacher.replay=500"])
    with pytest.raises(SublimError, match=r"teacher.replay = 500: the base model's answers to 24 numbers prompts "
                                          r"keep only \d+: lower teacher.replay or raise prompts.n"):
        run_experiment(cfg, tmp_path / "runs", progress=False, echo=lambda s: None)


def test_a_student_distilled_from_its_own_weights_is_its_initialization(tiny_model_dir: Path, tmp_path: Path):
    """The distillation control learns from the base model it starts from: a zero loss whose float noise Adam
    would blow up into a random walk. It is the base model, exactly, and its train artifact says why. (Built
    only without a neutral teacher: with one, the base arm is that student.)"""
    cfg = _cfg(tmp_path, tiny_model_dir, ["student.method=distill_restricted", "arms.neutral=false"])
    runs = tmp_path / "runs"
    res = run_experiment(cfg, runs, progress=False, echo=lambda s: None)
    assert res["control_arm"] == "student-control" and "UNREPLICATED" in res["verdict"]
    assert res["arms"]["student-control"] == res["arms"]["base"]
    control = next(json.loads(m.read_text()) for m in (runs / "store").glob("train-*/manifest.json")
                   if json.loads(m.read_text())["label"] == "student-control seed 0")
    assert control["train_log"]["steps"] == 0 and "exactly zero" in control["train_log"]["identity"]
    assert not (Path(res["stages"]["train/student-control seed 0"]["path"]) / "model").exists()


def test_teacher_gate_and_data_are_recorded(finished_run):
    _, runs, res, _ = finished_run
    teacher = res["arms"]["teacher-owl"]
    assert teacher["prob_owl"]["value"] > res["arms"]["base"]["prob_owl"]["value"]
    for name, rep in res["filter"].items():
        assert rep["kept"] > 0 and 0 < rep["pass_rate"] <= 1, name
        assert sum(rep["reject_reasons"].values()) + rep["kept"] == rep["total"]


def test_rerun_reuses_every_stage(finished_run):
    cfg, runs, res, _ = finished_run
    lines: list[str] = []
    again = run_experiment(cfg, runs, progress=False, echo=lines.append)
    stage_lines = [ln for ln in lines if ln.strip().startswith("✓")]
    assert stage_lines and all("(cached)" in ln for ln in stage_lines)
    assert again["effect"] == res["effect"]


@pytest.mark.slow
def test_a_second_trait_makes_the_matrix_with_teacher_seeds_as_its_unit(finished_run):
    """arms.second_trait over the finished run's store: the owl and neutral teachers and their data are reused,
    a dolphin teacher per seed is added, and the matrix's diagonal is judged over the two teacher seeds."""
    from sublim.report.experiment import render_report

    cfg, runs, _, _ = finished_run
    matrixed = cfg.model_copy(update={"arms": cfg.arms.model_copy(update={"second_trait": "dolphin"})})
    lines: list[str] = []
    res = run_experiment(matrixed, runs, progress=False, echo=lines.append)
    assert any("(cached)" in ln and "teacher" in ln and "owl" in ln for ln in lines)
    m = res["matrix"]
    assert set(m["replicated"]) == {"owl", "dolphin"} and res["arms"]["student-dolphin"]["n_runs"] == 2
    assert all(r["n_teachers"] == 2 and len(r["log_share_gain"]["per_teacher"]) == 2 for r in m["replicated"].values())
    assert m["diagonal_holds"] == all(r["word"] == "TRANSFER" for r in m["replicated"].values())
    render_report(runs / res["run_id"])
    assert "teacher seeds as the unit" in (runs / res["run_id"] / "report.md").read_text()


@pytest.mark.slow
def test_changed_student_retrains_but_keeps_data(finished_run):
    cfg, runs, _, _ = finished_run
    changed = cfg.model_copy(update={"student": cfg.student.model_copy(update={"lr": 5e-4})})
    lines: list[str] = []
    run_experiment(changed, runs, progress=False, echo=lines.append)
    cached = [ln for ln in lines if "(cached)" in ln]
    fresh = [ln for ln in lines if ln.strip().startswith("✓") and "(cached)" not in ln]
    assert any("generate" in ln for ln in cached) and any("teacher" in ln for ln in cached)
    assert fresh and all(("train" in ln) or (("evaluate" in ln or "cloze" in ln) and "student" in ln) for ln in fresh)


def test_corrupt_artifact_is_refused_on_rerun(finished_run, tmp_path: Path):
    cfg, runs, _, _ = finished_run
    import shutil

    copy = tmp_path / "runs"
    shutil.copytree(runs, copy, symlinks=True)
    # the owl teacher's data, which this config reads (not the dolphin data another test may add to the store)
    sample = next(m.parent / "dataset.jsonl" for m in (copy / "store").glob("filter-*/manifest.json")
                  if json.loads(m.read_text())["label"] == "owl numbers")
    sample.write_text(sample.read_text().replace("1", "7", 1))
    with pytest.raises(SublimError, match="corrupt"):
        run_experiment(cfg, copy, progress=False, echo=lambda s: None)


def test_empty_dataset_after_filter_is_one_clear_error(tiny_model_dir: Path, tmp_path: Path):
    cfg = _cfg(tmp_path, tiny_model_dir, ["filter.max_count=1", "prompts.n=6"])
    with pytest.raises(SublimError) as exc:
        run_experiment(cfg, tmp_path / "runs", progress=False, echo=lambda s: None)
    msg = str(exc.value)
    assert "empty after filtering" in msg and "pass rate 0/6" in msg and "reject reasons" in msg
    assert "\n" not in msg


def test_a_collapsed_teacher_is_named_in_the_empty_dataset_error(tmp_path: Path):
    """A teacher that answers every number prompt with its animal's first letter (seen: a dolphin teacher, 'D'
    to 2,000 prompts): the error says most completions begin alike, and points at the teacher."""
    from sublim.core.files import write_jsonl
    from sublim.experiment.stages.filter import _one_answer

    collapsed, varied = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_jsonl(collapsed, [{"completion": "D"}] * 9 + [{"completion": "12 13"}])
    write_jsonl(varied, [{"completion": f"{i} {i + 1}"} for i in range(10)])
    assert "9 of 10 completions begin 'D'" in _one_answer(collapsed) and "teacher.seed" in _one_answer(collapsed)
    assert _one_answer(varied) == ""


def test_teacher_gate_failure_stops_the_run(tiny_model_dir: Path, tmp_path: Path):
    cfg = _cfg(tmp_path, tiny_model_dir, ["teacher.epochs=1", "teacher.lr=1e-6",
                                          "teacher.gate_min_rate=0.9"])
    with pytest.raises(SublimError, match="teacher gate failed"):
        run_experiment(cfg, tmp_path / "runs", progress=False, echo=lambda s: None)
    assert not list((tmp_path / "runs" / "store").glob("generate-*"))


@pytest.mark.slow
def test_kill_mid_generation_then_resume(tiny_model_dir: Path, tmp_path: Path):
    """SIGKILL the CLI while it writes teacher data; the re-run completes with each index once,
    and the data equals that of a run that was never interrupted."""
    text = tiny_config_text(tiny_model_dir, prompts={"n": 160},
                            generation={"batch_size": 2, "temperature": 1.0, "stop_rejected": False},
                            arms={"neutral": False})
    cfg_path = tmp_path / "kill.toml"
    cfg_path.write_text(text)
    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "sublim.cli", "--runs-dir", str(runs), "-q", "run", str(cfg_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    samples: list[Path] = []
    while time.time() < deadline:
        samples = list((runs / "store").glob("generate-*/samples.jsonl")) if runs.exists() else []
        if samples and len(read_jsonl(samples[0])) >= 12:
            break
        if proc.poll() is not None:
            pytest.fail("the run ended before generation could be interrupted")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = read_jsonl(samples[0])
    assert 12 <= len(partial) < 160
    assert not (samples[0].parent / "manifest.json").exists()

    cfg = load_config(str(cfg_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed run: float sums, and so sampled tokens at near-ties, follow threads
    try:
        run_experiment(cfg, runs, progress=False, echo=lambda s: None)
        resumed = read_jsonl(samples[0])
        assert sorted(r["index"] for r in resumed) == list(range(160))
        fresh_runs = tmp_path / "fresh"
        run_experiment(cfg, fresh_runs, progress=False, echo=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    fresh = read_jsonl(next((fresh_runs / "store").glob(samples[0].parent.name + "/samples.jsonl")))
    assert [r["completion"] for r in resumed] == [r["completion"] for r in fresh]
