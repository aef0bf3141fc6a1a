"""The Ray executor: every stage of every run is a Ray task, with its resources and after its inputs.

The driver (this process) walks each run's plan with the same runner as ``sublim run``, one thread per
run. Where a stage is not finished in the store, it submits a task and waits for it; the stage's inputs
are finished by then, because the runner reaches a stage only after the stages it reads. The task, in
a Ray worker, walks the same run up to that stage (every earlier one is a cache hit), computes it under
the store's claim, and stops. So:

- a stage several runs share is one task of this sweep (the driver asks once), and one computation
  across sweeps and machines (the second task waits on the claim, then finds the artifact);
- a worker killed mid-stage is retried by Ray; the retry takes the dead worker's claim over and resumes
  its work directory (generation from its last complete batch);
- the store is a path every worker reaches: local for a one-machine cluster, a shared filesystem for more.

Model stages (training, generation, evaluation) ask for a GPU when the cluster has one, else
``cpus_per_task`` CPUs; torch in a worker uses that many threads.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from sublim.backends import ModelCache
from sublim.core.config import ExperimentConfig
from sublim.core.errors import SublimError
from sublim.core.meter import METER
from sublim.core.store import BUILDS, Artifact, Store
from sublim.experiment.context import Build, Context, model_cache
from sublim.experiment.runner import run_experiment, run_id

MODEL_STAGES = {"teacher", "train", "generate", "evaluate", "cloze", "judge", "defend"}
"""Stages that run a model (a GPU when the cluster has one); the others are light bookkeeping."""


class Reached(BaseException):  # noqa: N818 - a signal, not an error; BaseException so no handler swallows it
    """The task's stage is finished: stop walking the run."""

    def __init__(self, built: bool) -> None:
        super().__init__()
        self.built = built


class StageTarget:
    """A worker's hook: compute the one stage this task is for; every stage before it must be finished."""

    def __init__(self, stage: str, key: str) -> None:
        self.stage, self.key = stage, key

    def __call__(self, ctx: Context, stage: str, key: str, config: dict[str, Any], inputs: dict[str, str],
                 label: str, build: Build) -> tuple[Artifact, bool]:
        if key == self.key:
            _, built = ctx.store.compute(stage, key, config, inputs, build, label=label)
            raise Reached(built)
        done = ctx.store.get(stage, key)
        if done is None:
            raise SublimError(f"stage {stage} ({label}) comes before {self.stage} {self.key[:16]} but is not "
                              "finished: the driver submits a stage only after its inputs")
        return done, False


_MODELS: dict[tuple[str, str], ModelCache] = {}
"""Per worker process: loaded models, kept across the tasks it runs."""


def _worker_models(cfg: ExperimentConfig) -> ModelCache:
    key = (cfg.device, repr(sorted((cfg.arms.cross_model_chat_template or "",))))
    if key not in _MODELS:
        _MODELS[key] = model_cache(cfg, lambda s: None)
    return _MODELS[key]


def compute_stage(config: dict[str, Any], runs_dir: str, stage: str, key: str, threads: int) -> bool:
    """In a worker: walk the run to ``stage`` (key ``key``) and compute it; True if this task built it."""
    torch.set_num_threads(threads)
    cfg = ExperimentConfig.model_validate(config)
    try:
        run_experiment(cfg, Path(runs_dir), progress=False, echo=lambda s: None, hook=StageTarget(stage, key),
                       models=_worker_models(cfg))
    except Reached as done:
        return done.built
    raise SublimError(f"run {run_id(cfg)} finished without reaching stage {stage} {key[:16]}")


class RayStages:
    """The driver's hook: a stage not yet in the store becomes one Ray task (one per key for this sweep)."""

    def __init__(self, runs_dir: Path, cpus_per_task: int, gpus: bool) -> None:
        import ray  # optional: sublim[ray]

        self.ray = ray
        self.runs_dir, self.cpus, self.gpus = runs_dir, cpus_per_task, gpus
        self.remote = ray.remote(max_retries=3)(compute_stage)
        self._lock = threading.Lock()
        self._tasks: dict[str, Any] = {}

    def resources(self, stage: str) -> dict[str, Any]:
        if stage in MODEL_STAGES and self.gpus:
            return {"num_gpus": 1, "num_cpus": self.cpus}
        return {"num_cpus": self.cpus if stage in MODEL_STAGES else 1}

    def __call__(self, ctx: Context, stage: str, key: str, config: dict[str, Any], inputs: dict[str, str],
                 label: str, build: Build) -> tuple[Artifact, bool]:
        done = ctx.store.get(stage, key)
        if done is not None:
            return done, False
        with self._lock:
            task = self._tasks.get(key)
            if task is None:
                threads = self.cpus if stage in MODEL_STAGES else 1
                task = self.remote.options(**self.resources(stage)).remote(
                    ctx.cfg.model_dump(mode="json"), str(self.runs_dir), stage, key, threads)
                self._tasks[key] = task
        try:
            built = bool(self.ray.get(task))
        except self.ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
            raise SublimError(f"stage {stage} ({label}) failed in a Ray worker: {cause}") from None
        done = ctx.store.get(stage, key)
        if done is None:
            raise SublimError(f"stage {stage} ({label}): its Ray task ended but the store has no artifact at "
                              f"{ctx.store.path(stage, key)}: is runs_dir a path every worker reaches?")
        return done, built


def _count_workers_work(runs_dir: Path, builds: Path, offset: int) -> None:
    """Add the model work the workers did for this sweep (from the manifests of the stages built since
    ``offset`` in the builds log) to this process's meter, so throughput figures cover it."""
    if not builds.is_file():
        return
    with builds.open("rb") as fh:
        fh.seek(offset)
        lines = [json.loads(x) for x in fh.read().decode().splitlines() if x.strip()]
    store = Store(runs_dir)
    for line in lines:
        art = store.get(line["stage"], line["key"])
        if art is not None:
            METER.add_work(art.manifest.get("work", {}))


def check_reachable(address: str, timeout_s: float) -> None:
    """A ``host:port`` cluster address must accept a connection within ``timeout_s`` (Ray itself retries an
    unreachable one without end); other forms (``auto``, ``ray://``) are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise SublimError(f"--address {address}: no Ray cluster answered within {timeout_s:g} s "
                          f"({exc.strerror or type(exc).__name__}): start one (ray start --head) or fix the address, "
                          "or raise --connect-timeout") from None


def run_or_error(cfg: ExperimentConfig, call: Callable[[], dict[str, Any]], echo: Callable[[str], None]
                 ) -> dict[str, Any]:
    """A run's results, or where it stops on bad input or a failed stage (a teacher that writes no usable data),
    its id and the error: one run's failure does not end a sweep's other runs."""
    try:
        return call()
    except SublimError as err:
        echo(f"run {run_id(cfg)} failed: {err}")
        return {"run_id": run_id(cfg), "error": str(err)}


def run_on_ray(configs: Sequence[ExperimentConfig], runs_dir: Path, *, address: str | None = None,
               cpus_per_task: int = 1, echo: Callable[[str], None] = print,
               connect_timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Run every config with its stages as Ray tasks; ``address`` joins a running cluster (default: start a
    local one for the sweep), which must answer within ``connect_timeout_s``. Returns each run's results, in
    order."""
    if address:
        check_reachable(address, connect_timeout_s)
    import ray  # optional: sublim[ray]

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    try:
        gpus = ray.cluster_resources().get("GPU", 0) > 0
        device = "cuda" if gpus else "cpu"  # one device class for the driver's keys and the workers'
        configs = [c if c.device == device else c.model_copy(update={"device": device}) for c in configs]
        hook = RayStages(Path(runs_dir).resolve(), cpus_per_task, gpus)
        echo(f"Ray: {ray.cluster_resources().get('CPU', 0):.0f} CPUs, "
             f"{ray.cluster_resources().get('GPU', 0):.0f} GPUs; every stage a task")

        def one(cfg: ExperimentConfig) -> dict[str, Any]:
            rid = run_id(cfg)
            return run_or_error(cfg, lambda: run_experiment(
                cfg, Path(runs_dir), progress=False, echo=lambda s: echo(f"[{rid}] {s.strip()}"), hook=hook,
                models=model_cache(cfg, lambda s: None)), echo)

        builds = Path(runs_dir) / "store" / BUILDS
        offset = builds.stat().st_size if builds.is_file() else 0
        with ThreadPoolExecutor(max_workers=max(1, len(configs))) as pool:
            results = list(pool.map(one, configs))
        _count_workers_work(Path(runs_dir), builds, offset)
        return results
    finally:
        if started_here:
            ray.shutdown()
