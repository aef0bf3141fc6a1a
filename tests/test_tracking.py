"""Tracking (sublim.core.tracking): TensorBoard, MLflow and W&B (offline) written and read back; a tiny run's
training curves and results reach them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sublim.api import run_experiment
from sublim.core.config import load_config
from sublim.core.errors import SublimError
from sublim.core.tracking import open_tracking
from tests.helpers import tiny_config_text


def _tensorboard(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_every_tracker_keeps_what_it_was_sent(tmp_path: Path) -> None:
    import mlflow

    tracking = open_tracking(["tensorboard", "mlflow", "wandb"], tmp_path, "owl-run-1", {"teacher.lr": 5e-5})
    for step in (1, 2, 3):
        tracking.log("train/teacher owl (fine-tuned)", {"loss": 1.0 / step, "lr": 0.1}, step)
    tracking.log("results", {"replicated/log_share_gain/mean": 0.39, "verdict": "not a number"})  # type: ignore[dict-item]
    tracking.close()
    tb = _tensorboard(tmp_path / "tensorboard" / "owl-run-1")
    assert tb["train/teacher-owl-fine-tuned/loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert tb["results/replicated/log_share_gain/mean"] == [(0, pytest.approx(0.39))] and len(tb) == 3
    client = mlflow.MlflowClient((tmp_path / "mlruns").resolve().as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("sublim").experiment_id])
    assert run.info.run_name == "owl-run-1" and run.data.params == {"teacher.lr": "5e-05"}
    history = client.get_metric_history(run.info.run_id, "train/teacher-owl-fine-tuned/loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert run.info.status == "FINISHED"
    [offline] = list((tmp_path / "wandb").glob("offline-run-*"))  # `wandb sync` uploads it
    assert [f.stat().st_size > 0 for f in offline.glob("run-*.wandb")] == [True]


def test_an_unknown_tracker_is_refused_before_any_is_opened(tmp_path: Path) -> None:
    with pytest.raises(SublimError, match="--track neptune: unknown tracker; choose from tensorboard, mlflow, wandb"):
        open_tracking(["tensorboard", "neptune"], tmp_path, "r", {})
    assert not (tmp_path / "tensorboard").exists()


def test_a_run_sends_every_training_step_and_its_results(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_config_text(tiny_model_dir))
    cfg = load_config(str(path), ["arms.teacher_seeds=[0]", "arms.neutral=false"])
    res = run_experiment(cfg, tmp_path / "runs", progress=False, echo=lambda s: None, track=["tensorboard"])
    tb = _tensorboard(tmp_path / "runs" / "tracking" / "tensorboard" / res["run_id"])
    teacher = next(m for m in (tmp_path / "runs" / "store").glob("teacher-*/manifest.json"))
    steps = json.loads(teacher.read_text())["train_log"]["steps"]
    [loss] = [t for t in tb if t.startswith("train/teacher") and t.endswith("/loss")]
    assert [s for s, _ in tb[loss]] == list(range(1, steps + 1))
    lr = tb[loss.replace("/loss", "/lr")]
    assert lr[-1][1] < max(v for _, v in lr)  # the schedule decays to the end
    assert any(t.startswith("train/student") for t in tb) and any(t.startswith("results/arms/") for t in tb)
