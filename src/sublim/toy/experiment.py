"""The whole toy run: teachers, the six arms, the theory trace, sweeps, results.json and charts.

Arms (per model index i, all scored on held-out digits):

- ``reference``: teacher i's untrained init.
- ``teacher``: trained with cross-entropy on the 10 class logits only.
- ``student-aux`` / ``student-all``: start from teacher i's init, distilled on noise on the
  auxiliary logits only / on all logits.
- ``cross-aux`` / ``cross-all``: the same from a different init (a seed no teacher uses).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sublim.core.errors import SublimError
from sublim.core.files import write_json
from sublim.core.records import library_versions, machine_info
from sublim.core.seeds import derive_seed
from sublim.evaluate.stats import mean_ci, paired_permutation_test
from sublim.toy.config import ToyConfig
from sublim.toy.data import N_CLASSES, DigitData, load_digit_data
from sublim.toy.models import accuracy, class_loss, init_stack, perturb
from sublim.toy.training import Arm, distill, train_teachers

ROLE_SHARED_INIT = 0
ROLE_CROSS_INIT = 1
ROLE_PERTURB = 4

ARM_ORDER = ["reference", "teacher", "student-aux", "student-all", "cross-aux", "cross-all"]
ARM_LABELS = {
    "reference": "untrained init (reference)",
    "teacher": "teacher (class logits trained)",
    "student-aux": "student, same init, aux logits only",
    "student-all": "student, same init, all logits",
    "cross-aux": "student, different init, aux logits only",
    "cross-all": "student, different init, all logits",
}
RESULTS = "results.json"


def idle_cores() -> float | None:
    """Cores left idle by all processes, sampled from /proc/stat over 0.3 s (None off Linux)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
        return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields)

    try:
        idle0, total0 = sample()
        time.sleep(0.3)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (idle1 - idle0) / (total1 - total0)


def auto_threads() -> int:
    """torch's thread count, lowered to the cores other processes leave idle right now."""
    want = torch.get_num_threads()
    idle = idle_cores()
    if idle is None:
        return want
    return max(1, min(want, int(idle + 0.25)))


@contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Use n torch threads inside the block (0: auto_threads()), restore the old count after."""
    old = torch.get_num_threads()
    use = n if n > 0 else auto_threads()
    torch.set_num_threads(use)
    try:
        yield use
    finally:
        torch.set_num_threads(old)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SublimError("runtime.device = 'cuda' but torch sees no GPU: use "
                          "--set runtime.device=cpu")
    return torch.device(name)


def _ci(values: np.ndarray | list[float]) -> dict[str, float]:
    return mean_ci(np.asarray(values, dtype=float)).as_dict()


def _arm_entry(name: str, acc: np.ndarray) -> dict[str, Any]:
    return {"label": ARM_LABELS.get(name, name), "accuracy": [round(float(a), 6) for a in acc],
            "mean": _ci(acc)}


def _band(matrix: np.ndarray) -> dict[str, list[float]]:
    """Rows = steps, columns = models → mean and 95% CI per step."""
    rows = [mean_ci(r) for r in matrix]
    return {"mean": [r.value for r in rows], "low": [r.low for r in rows],
            "high": [r.high for r in rows]}


def _sizes(dim: int, hidden: int, layers: int, n_aux: int) -> list[int]:
    return [dim] + [hidden] * layers + [N_CLASSES + n_aux]


class _Clock:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.phases: dict[str, float] = {}
        self._last = self.t0

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = round(self.phases.get(name, 0.0) + now - self._last, 2)
        self._last = now

    def total(self) -> float:
        return round(time.perf_counter() - self.t0, 2)


def _run(cfg: ToyConfig, data: DigitData, progress: bool) -> dict[str, Any]:
    clock = _Clock()
    device = _device(cfg.runtime.device)
    mc, sw = cfg.model, cfg.sweeps
    m = mc.n_models
    x_tr = torch.from_numpy(data.x_train).to(device)
    y_tr = torch.from_numpy(data.y_train).to(device)
    x_te = torch.from_numpy(data.x_test).to(device)
    y_te = torch.from_numpy(data.y_test).to(device)
    aux_sweep = sorted(set(sw.n_aux)) if sw.enabled else []
    n_aux_built = max([mc.n_aux, *aux_sweep])
    sizes = _sizes(data.input_dim, mc.hidden, mc.layers, n_aux_built)
    shared_seeds = [derive_seed(mc.seed, ROLE_SHARED_INIT, i) for i in range(m)]
    cross_seeds = [derive_seed(mc.seed, ROLE_CROSS_INIT, i) for i in range(m)]
    t_init = init_stack(sizes, shared_seeds, mc.init_scale).to(device)
    c_init = init_stack(sizes, cross_seeds, mc.init_scale).to(device)
    clock.lap("init")

    teachers = train_teachers(t_init, x_tr, y_tr, cfg.teacher, mc.seed, progress,
                              desc=f"teachers ({m})")
    clock.lap("teachers")
    displacement = teachers.minus(t_init)
    ids = list(range(m))
    aux = slice(N_CLASSES, N_CLASSES + mc.n_aux)
    every = slice(0, N_CLASSES + mc.n_aux)
    arms = [Arm("student-aux", t_init, ids, aux, track=True),
            Arm("cross-aux", c_init, ids, aux, track=True),
            Arm("student-all", t_init, ids, every, track=True),
            Arm("cross-all", c_init, ids, every, track=True)]
    alphas = sorted(set(sw.alpha)) if sw.enabled else []
    for k in aux_sweep:
        if k != mc.n_aux:
            arms.append(Arm(f"n_aux={k}", t_init, ids, slice(N_CLASSES, N_CLASSES + k)))
    perturb_seeds = [derive_seed(mc.seed, ROLE_PERTURB, i) for i in range(m)]
    for alpha in alphas:
        if alpha != 0:
            arms.append(Arm(f"alpha={alpha:g}", perturb(t_init, alpha, perturb_seeds), ids, aux))
    outcome = distill(teachers, displacement, arms, cfg.distill, cfg.theory, x_te, y_te,
                      mc.seed, progress, desc=f"students ({len(arms)}×{m})")
    clock.lap("students")

    acc = {"reference": accuracy(t_init, x_te, y_te), "teacher": accuracy(teachers, x_te, y_te)}
    acc.update({name: accuracy(s, x_te, y_te) for name, s in outcome.students.items()})
    res: dict[str, Any] = {
        "arm_order": ARM_ORDER,
        "arms": {name: _arm_entry(name, acc[name]) for name in ARM_ORDER},
        "chance": 1.0 / N_CLASSES,
        "architecture": sizes[:-1] + [N_CLASSES + mc.n_aux],
        "n_params": teachers.n_params(),
        "final_cosine": {name: {"per_model": [round(float(c), 6) for c in outcome.final_cosine[
            name]], "mean": _ci(outcome.final_cosine[name])} for name in ARM_ORDER[2:]},
    }
    diff = acc["student-aux"] - acc["cross-aux"]
    res["comparison"] = {
        "what": "student-aux minus cross-aux, paired by teacher",
        "difference": _ci(diff),
        "p_value": paired_permutation_test(acc["student-aux"], acc["cross-aux"]),
    }
    if outcome.theory:
        th = outcome.theory
        x_l, y_l = x_te[: cfg.theory.loss_examples], y_te[: cfg.theory.loss_examples]
        res["theory"] = {
            "steps": th["steps"], "loss_steps": th["loss_steps"],
            "loss_examples": int(x_l.shape[0]),
            "cosine": {k: _band(v) for k, v in th["cosine"].items()},
            "loss": {k: _band(v) for k, v in th["loss"].items()},
            "teacher_loss": _ci(class_loss(teachers, x_l, y_l)),
            "cosine_at_end": {k: _ci(v[-1]) for k, v in th["cosine"].items()},
        }
    if sw.enabled:
        res["sweeps"] = _sweeps(cfg, data, acc, outcome.final_cosine, aux_sweep, alphas,
                                (x_tr, y_tr, x_te, y_te), progress, clock)
    clock.lap("evaluation")
    res["wall_time_s"] = clock.total()
    res["phase_wall_time_s"] = clock.phases
    res["torch_threads"] = torch.get_num_threads()
    res["device"] = str(device)
    return res


def _sweeps(cfg: ToyConfig, data: DigitData, acc: dict[str, np.ndarray],
            final_cos: dict[str, np.ndarray], aux_sweep: list[int], alphas: list[float],
            tensors: tuple[torch.Tensor, ...], progress: bool, clock: _Clock) -> dict[str, Any]:
    mc, sw = cfg.model, cfg.sweeps
    x_tr, y_tr, x_te, y_te = tensors
    out: dict[str, Any] = {}
    if aux_sweep:
        names = ["student-aux" if k == mc.n_aux else f"n_aux={k}" for k in aux_sweep]
        out["n_aux"] = {"values": aux_sweep,
                        "student-aux": [_arm_entry(n, acc[n]) for n in names],
                        "cosine": [_ci(final_cos[n]) for n in names]}
    if alphas:
        names = ["student-aux" if a == 0 else f"alpha={a:g}" for a in alphas]
        out["alpha"] = {"values": alphas,
                        "student-aux": [_arm_entry(n, acc[n]) for n in names],
                        "cosine": [_ci(final_cos[n]) for n in names],
                        "cross-aux": _arm_entry("cross-aux", acc["cross-aux"])}
    widths = sorted(set(sw.hidden))
    if widths:
        n = min(sw.n_models or mc.n_models, mc.n_models) if mc.hidden in widths else (
            sw.n_models or mc.n_models)
        rows: dict[str, list[dict[str, Any]]] = {"teacher": [], "student-aux": [],
                                                 "cross-aux": []}
        for width in widths:
            if width == mc.hidden:  # models 0..n-1 of the main run are this point's models
                got = {k: acc[k][:n] for k in rows}
            else:
                got = _width_point(cfg, data, width, n, tensors, progress)
            for k in rows:
                rows[k].append(_arm_entry(k, got[k]))
        out["hidden"] = {"values": widths, "n_models": n, **rows}
    clock.lap("sweeps")
    return out


def _width_point(cfg: ToyConfig, data: DigitData, width: int, n: int,
                 tensors: tuple[torch.Tensor, ...], progress: bool) -> dict[str, np.ndarray]:
    mc = cfg.model
    x_tr, y_tr, x_te, y_te = tensors
    device = x_tr.device
    sizes = _sizes(data.input_dim, width, mc.layers, mc.n_aux)
    t_init = init_stack(sizes, [derive_seed(mc.seed, ROLE_SHARED_INIT, i) for i in range(n)],
                        mc.init_scale).to(device)
    c_init = init_stack(sizes, [derive_seed(mc.seed, ROLE_CROSS_INIT, i) for i in range(n)],
                        mc.init_scale).to(device)
    teachers = train_teachers(t_init, x_tr, y_tr, cfg.teacher, mc.seed, progress,
                              desc=f"teachers width {width}")
    aux = slice(N_CLASSES, N_CLASSES + mc.n_aux)
    ids = list(range(n))
    arms = [Arm("student-aux", t_init, ids, aux), Arm("cross-aux", c_init, ids, aux)]
    outcome = distill(teachers, teachers.minus(t_init), arms, cfg.distill,
                      cfg.theory.model_copy(update={"steps": 0}), x_te, y_te, mc.seed, progress,
                      desc=f"students width {width}")
    got = {k: accuracy(s, x_te, y_te) for k, s in outcome.students.items()}
    got["teacher"] = accuracy(teachers, x_te, y_te)
    return got


def _summary(cfg: ToyConfig, data: DigitData, res: dict[str, Any]) -> str:
    a = {k: v["mean"] for k, v in res["arms"].items()}

    def f(k: str) -> str:
        iv = a[k]
        return f"{iv['value']:.3f} [{iv['low']:.3f}, {iv['high']:.3f}]"

    shared, cross = a["student-aux"], a["cross-aux"]
    verdict = ("transfer detected: the same-init interval lies above the different-init one"
               if shared["low"] > cross["high"] else "no clear transfer: the intervals overlap")
    arch = "-".join(str(s) for s in res["architecture"])
    text = (
        f"{cfg.model.n_models} MLPs ({arch}, {cfg.model.n_aux} auxiliary logits) on "
        f"{data.name} ({data.x_train.shape[0]} train / {data.x_test.shape[0]} test images): "
        f"teachers reach {f('teacher')} test accuracy (untrained init {f('reference')}; "
        f"chance 0.100). Students distilled on the teachers' auxiliary logits only, over "
        f"{cfg.distill.steps}×{cfg.distill.batch_size} uniform-noise images and never a digit, "
        f"reach {f('student-aux')} from the teacher's own init but {f('cross-aux')} from a "
        f"different init ({verdict}; paired permutation p = {res['comparison']['p_value']:.2g}). "
        f"Distilled on all logits: {f('student-all')} (same init), {f('cross-all')} (different "
        f"init)."
    )
    if "theory" in res:
        end = res["theory"]["cosine_at_end"]
        k = res["theory"]["steps"][-1]
        text += (f" Theory check: after {k} steps the cosine between a student's update and its "
                 f"teacher's displacement is {end['student-aux']['value']:+.3f} (same init) vs "
                 f"{end['cross-aux']['value']:+.3f} (different init).")
    text += f" 95% CIs across models; wall time {res['wall_time_s']:.0f} s."
    return text


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _cached(path: Path, config_hash: str, data_sha: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        res: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if res.get("config_hash") == config_hash and res.get("data", {}).get("sha256") == data_sha:
        return res
    return None


def run_toy(cfg: ToyConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """Run the toy experiment into ``out`` (results.json, chart.png, theory.png, report.md).

    A results.json already in ``out`` for the same config hash and data is returned as is
    (charts are redrawn only if missing); any other results.json there is replaced.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_digit_data(cfg.data)
    config_hash = cfg.config_hash()
    path = out / RESULTS
    cached = _cached(path, config_hash, data.sha256)
    if cached is not None:
        return cached
    load = _load_average()
    with torch_threads(cfg.runtime.threads):
        body = _run(cfg, data, progress)
    body["load_average_1min_at_start"] = load
    versions = library_versions()  # scikit-learn included
    res: dict[str, Any] = {
        "kind": "sublim-toy",
        "name": cfg.name,
        "description": cfg.description,
        "config_hash": config_hash,
        "config": cfg.model_dump(mode="json"),
        "data": data.describe(),
        "noise": {"distribution": "uniform", "low": cfg.distill.noise_low,
                  "high": cfg.distill.noise_high, "fresh_each_step": True},
        "machine": machine_info(),
        "versions": versions,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **body,
    }
    res["summary"] = _summary(cfg, data, res)
    res = _finite(res)
    write_json(path, res)
    return res


def _finite(obj: Any) -> Any:
    """NaN/inf → None so that results.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
