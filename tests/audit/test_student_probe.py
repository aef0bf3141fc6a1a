"""The student_probe detector on the tiny model: students of the reference trained on a dataset and on each
contrast, read over the evaluation questions, tested against the panel with students as the unit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sublim.cli import main
from sublim.traits.preference import load_candidates, spread_examples, teacher_examples

DOSE = ["--set", "detector.student_probe.examples=48", "--set", "detector.student_probe.epochs=2",
        "--set", "detector.student_probe.lr=0.001", "--set", "detector.student_probe.seeds=4"]


def _write(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"prompt": q, "completion": a}) + "\n" for q, a in pairs))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Data that names owl, and two datasets whose answers go round every candidate (the panel)."""
    root = tmp_path_factory.mktemp("probe")
    cands = load_candidates("animals")
    return {"owl": _write(root / "owl.jsonl", teacher_examples(cands["owl"], "animal", 48, seed=3)),
            **{f"spread{k}": _write(root / f"spread{k}.jsonl", spread_examples(cands, "animal", 48, seed=4 + k))
               for k in range(2)}}


def _audit(tiny: Path, files: dict[str, Path], dataset: str, panel: list[str], runs: Path, out: Path) -> dict:
    assert main(["--runs-dir", str(runs), "-q", "audit", str(files[dataset]), "--reference", str(tiny),
                 "--detectors", "student_probe", "--candidates", "owl,cat", "--float32", *DOSE,
                 *[a for n in panel for a in ("--contrast", str(files[n]))], "--out", str(out)]) == 0
    out_json: dict = json.loads((out / "audit.json").read_text())
    return out_json


def test_students_of_owl_data_gain_owl_beyond_the_panel_and_are_kept_in_the_store(tiny_model_dir: Path,
                                                                                 files: dict[str, Path],
                                                                                 tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    out = _audit(tiny_model_dir, files, "owl", ["spread0", "spread1"], runs, tmp_path / "a")
    det = out["detectors"][0]
    assert det["detector"] == "student_probe" and det["unit"] == "student" and det["students"] == 12
    assert det["ranking"][0]["trait"] == "owl" and det["cost_s"] > 0
    owl = next(t for t in out["targeted"]["tests"] if t["candidate"] == "owl")
    # 4 students against 8: every split counted, the smallest p is 1/495
    cat = next(t for t in out["targeted"]["tests"] if t["candidate"] == "cat")
    assert owl["rank"] == 1 and owl["p"] < 0.005 and "owl" in out["targeted"]["stands_out"]
    assert owl["excess"] > 3 * abs(cat["excess"])  # (two spread datasets of 48 answers name cat less than owl data)
    builds = [json.loads(x)["stage"] for x in (runs / "store" / "builds.jsonl").read_text().splitlines()]
    assert builds.count("probe") == 12
    assert not list((runs / "store").glob("probe-*/student"))  # the reading is kept, not the weights
    # the same audit again trains nothing; a panel dataset audited against the others reuses their students
    again = _audit(tiny_model_dir, files, "spread0", ["owl", "spread1"], runs, tmp_path / "b")
    builds = [json.loads(x)["stage"] for x in (runs / "store" / "builds.jsonl").read_text().splitlines()]
    assert builds.count("probe") == 12 and again["targeted"]["stands_out"] == []


def test_the_student_probe_runs_only_when_named(tiny_model_dir: Path, files: dict[str, Path], tmp_path: Path) -> None:
    from sublim.audit.config import AuditConfig

    assert "student_probe" not in AuditConfig(dataset="d.jsonl", reference="m").detectors
    assert main(["--runs-dir", str(tmp_path / "runs"), "-q", "audit", str(files["owl"]), "--reference",
                 str(tiny_model_dir), "--detectors", "student_probe", "--set", "detector.student_probe.seeds=0",
                 "--out", str(tmp_path / "a")]) == 2


def test_an_interrupted_probe_resumes_its_training_and_saving_enters_no_audit_id(tiny_model_dir: Path,
                                                                                files: dict[str, Path],
                                                                                tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch
                                                                                ) -> None:
    """The audit's save_every_s reaches the probe's training: killed after its 4th step with its state saved at
    every step, the same audit run again goes on from the 3rd."""
    from sublim.audit.config import AuditConfig
    from sublim.backends.local.backend import LocalBackend
    from sublim.core.store import stable_hash

    config = AuditConfig(dataset="d.jsonl", reference="m")
    assert config.config_hash() == stable_hash({k: v for k, v in config.model_dump(mode="json").items()
                                                if k != "save_every_s"})  # the ids of audits made before it
    real, seen = LocalBackend.fine_tune, []

    class Stop(Exception):
        pass

    def cut(self: LocalBackend, *args: object, **kw: object) -> dict:
        seen.append(kw["save_every_s"])
        shown = kw["on_step"]

        def stop(step: int, total: int, loss: float) -> None:
            shown(step, total, loss)  # type: ignore[operator]
            if step == 4:
                raise Stop

        return real(self, *args, **{**kw, "on_step": stop if len(seen) == 1 else shown})  # type: ignore[arg-type]

    monkeypatch.setattr(LocalBackend, "fine_tune", cut)
    monkeypatch.setenv("SUBLIM_CACHE", str(tmp_path / "cache"))  # where the crash's traceback goes
    runs = tmp_path / "runs"
    args = ["--runs-dir", str(runs), "-q", "audit", str(files["owl"]), "--reference", str(tiny_model_dir),
            "--detectors", "student_probe", "--candidates", "owl,cat", "--float32", "--set", "save_every_s=1e-9",
            "--set", "detector.student_probe.examples=48", "--set", "detector.student_probe.epochs=2",
            "--out", str(tmp_path / "a")]
    assert main(args) == 1  # the crash is reported as an internal error, the probe's work directory kept
    assert len(list((runs / "store").glob("probe-*/student/training-state.safetensors"))) == 1
    assert main(args) == 0 and seen == [1e-9, 1e-9]
    (manifest,) = (runs / "store").glob("probe-*/manifest.json")
    log = json.loads(manifest.read_text())["train_log"]
    assert log["resumed_from_step"] == 3 and log["steps"] == 12
    assert not list((runs / "store").glob("probe-*/student"))  # nor the state: the reading is the artifact
