"""A training run's state saved as it goes, so that an interrupted training (a killed process, a preempted
machine) goes on from its last save instead of from the start, and ends with the same model.

The state is one safetensors file in the unfinished artifact's directory (the store keeps that directory across
interruptions; the file is removed once the model is saved): the trained parameters, the optimizer's moments and
step counts, the scheduler's position, torch's random state, the losses so far and the seconds spent. The data
order needs no saving: each epoch's order is drawn again from the run's seed. A saved state whose shapes or
length do not match the training about to run is not used."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

STATE_FILE = "training-state.safetensors"
"""The state's name in the artifact's working directory."""
VERSION = 1


@dataclass
class Saver:
    """Where a training saves its state and how often (``every_s`` seconds of training; 0: never)."""

    path: Path | None
    every_s: float
    last: float = field(default_factory=time.monotonic)

    def due(self) -> bool:
        return self.path is not None and self.every_s > 0 and time.monotonic() - self.last >= self.every_s


def shape_of(params: list[torch.nn.Parameter], total: int) -> dict[str, Any]:
    """What a saved state must match to be used: the optimizer steps of the whole run and the trained shapes."""
    return {"version": VERSION, "total_steps": total, "shapes": [list(p.shape) for p in params]}


def save_state(path: Path, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, sched: Any,
               losses: list[float], seconds: float, total: int) -> None:
    """Write the state atomically (a whole file or the previous one)."""
    opt_state = opt.state_dict()
    tensors = {f"param.{i}": p.detach() for i, p in enumerate(params)}
    for i, moments in opt_state["state"].items():
        tensors.update({f"opt.{i}.{name}": t for name, t in moments.items() if isinstance(t, torch.Tensor)})
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    meta = {**shape_of(params, total), "losses": losses, "seconds": seconds,
            "param_groups": opt_state["param_groups"], "scheduler": sched.state_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file({k: t.contiguous() for k, t in tensors.items()}, str(tmp), metadata={"state": json.dumps(meta)})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written state (a full disk) holds no space; the previous one stays
        raise


def load_state(path: Path, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, sched: Any,
               total: int) -> tuple[list[float], float] | None:
    """Restore a saved state into the training (the losses so far and the seconds they took), or None where there
    is none or it belongs to another training (it is then left to be overwritten)."""
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("state", "{}"))
        if {k: meta.get(k) for k in ("version", "total_steps", "shapes")} != shape_of(params, total):
            return None
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(f.get_tensor(f"param.{i}"))
        names = set(f.keys())
        state = {i: {n.split(".", 2)[2]: f.get_tensor(n) for n in names if n.startswith(f"opt.{i}.")}
                 for i in range(len(params))}
        groups = [{**g, **({"betas": tuple(g["betas"])} if "betas" in g else {})} for g in meta["param_groups"]]
        opt.load_state_dict({"state": {i: s for i, s in state.items() if s}, "param_groups": groups})
        sched.load_state_dict(meta["scheduler"])
        torch.set_rng_state(f.get_tensor("rng.cpu"))
        cuda = sorted((n for n in names if n.startswith("rng.cuda.")), key=lambda n: int(n.rsplit(".", 1)[1]))
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([f.get_tensor(n) for n in cuda])
    return [float(x) for x in meta["losses"]], float(meta["seconds"])
