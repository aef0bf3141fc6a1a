"""Experiment tracking, optional: a run's training curves and results sent to TensorBoard, MLflow or W&B.

What is tracked is a copy: the store's manifests and ``results.json`` stay the record. A run opens a
:class:`Tracking` with the trackers asked for (``sublim run --track tensorboard,mlflow,wandb``), keyed by the run
id, under one directory (default ``<runs>/tracking``): TensorBoard event files, an MLflow file store (``mlruns``),
and a W&B run in offline mode (``wandb sync`` uploads it later). Each needs its package (``pip install
'sublim[tracking]'``); a tracker asked for and not installed is refused before any work.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from sublim.core.errors import SublimError

TRACKERS = ("tensorboard", "mlflow", "wandb")


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int | None) -> None: ...

    def close(self) -> None: ...


def _missing(name: str, package: str) -> SublimError:
    return SublimError(f"--track {name}: the {package} package is not installed; pip install 'sublim[tracking]' "
                       f"(or {package}), or leave {name} out")


class TensorBoard:
    """Scalars in an event file under ``root/tensorboard/<run id>`` (one step axis per tag)."""

    def __init__(self, root: Path, run_id: str, params: dict[str, Any]) -> None:
        try:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        self.Event, self.Summary = Event, Summary
        self.dir = root / "tensorboard" / run_id
        self.writer = EventFileWriter(str(self.dir))
        self.steps: dict[str, int] = {}

    def log(self, metrics: dict[str, float], step: int | None) -> None:
        for tag, value in metrics.items():
            at = step if step is not None else self.steps.get(tag, 0)
            self.steps[tag] = at + 1
            summary = self.Summary(value=[self.Summary.Value(tag=tag, simple_value=float(value))])
            self.writer.add_event(self.Event(step=at, wall_time=time.time(), summary=summary))

    def close(self) -> None:
        self.writer.close()


class MLflow:
    """A run named by the run id in experiment ``sublim`` of a file store under ``root/mlruns`` (or
    MLFLOW_TRACKING_URI when set: a server), the config as its parameters."""

    def __init__(self, root: Path, run_id: str, params: dict[str, Any]) -> None:
        try:
            import mlflow
        except ImportError:
            raise _missing("mlflow", "mlflow") from None
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # a local file store is what a laptop has
        self.client = mlflow.MlflowClient(os.environ.get("MLFLOW_TRACKING_URI") or (root / "mlruns").resolve().as_uri())
        exp = self.client.get_experiment_by_name("sublim")
        exp_id = exp.experiment_id if exp else self.client.create_experiment("sublim")
        self.run = self.client.create_run(exp_id, run_name=run_id)
        for key, value in list(params.items())[:100]:
            self.client.log_param(self.run.info.run_id, key[:250], str(value)[:500])

    def log(self, metrics: dict[str, float], step: int | None) -> None:
        for key, value in metrics.items():
            self.client.log_metric(self.run.info.run_id, key, float(value), step=step or 0)

    def close(self) -> None:
        self.client.set_terminated(self.run.info.run_id)


class Wandb:
    """A W&B run in offline mode under ``root`` (``wandb sync`` uploads it), the config as its config; each tag's
    step is logged beside it (``<tag>_step``), W&B's own step being one counter for the whole run."""

    def __init__(self, root: Path, run_id: str, params: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        root.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project="sublim", name=run_id, dir=str(root), config=params, mode="offline",
                              reinit="create_new", settings=wandb.Settings(silent=True, console="off"))

    def log(self, metrics: dict[str, float], step: int | None) -> None:
        row: dict[str, float] = dict(metrics)
        if step is not None:
            row.update({f"{k}_step": step for k in metrics})
        self.run.log(row)

    def close(self) -> None:
        self.run.finish()


KINDS: dict[str, type[TensorBoard] | type[MLflow] | type[Wandb]] = {
    "tensorboard": TensorBoard, "mlflow": MLflow, "wandb": Wandb}


def tag(*parts: str) -> str:
    """A metric name every tracker accepts: the parts' '/'-separated pieces, each with runs of other characters
    as one '-' ("train/teacher owl (fine-tuned)", "loss" → "train/teacher-owl-fine-tuned/loss")."""
    pieces = (re.sub(r"[^\w.]+", "-", w).strip("-") for p in parts for w in p.split("/"))
    return "/".join(w for w in pieces if w)


class Tracking:
    """The trackers of one run; ``log`` sends every metric to each."""

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)

    def log(self, prefix: str, metrics: dict[str, float], step: int | None = None) -> None:
        named = {tag(prefix, k): v for k, v in metrics.items() if isinstance(v, int | float)}
        for t in self.trackers:
            t.log(named, step)

    def close(self) -> None:
        for t in self.trackers:
            t.close()


def open_tracking(names: Sequence[str], root: Path, run_id: str, params: dict[str, Any]) -> Tracking:
    """The trackers named (checked before any is opened), each keyed by ``run_id`` under ``root``."""
    unknown = [n for n in names if n not in KINDS]
    if unknown:
        raise SublimError(f"--track {','.join(unknown)}: unknown tracker; choose from {', '.join(TRACKERS)}")
    root.mkdir(parents=True, exist_ok=True)
    return Tracking([KINDS[n](root, run_id, params) for n in dict.fromkeys(names)])


def flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (parameters of a tracker)."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: obj}
