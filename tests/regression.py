"""The regression fixture: what the default pipeline measures on the tiny model, exactly.

``python -m tests.regression`` rebuilds the tiny model, runs the tiny default experiment (restricted
distillation, like the shipped default preset) and writes ``tests/data/tiny-pipeline.json``;
``tests/test_regression.py`` runs the same and compares. The figures are the exact measurements
(greedy data, filter counts, training losses, first-token probabilities and shares, their means):
statistics (p-values, intervals) are derived from them and may change by design, these may not.

Both run in a fresh Python process pinned to kernels that do not depend on the CPU (``PINNED_ENV``):
PyTorch's own kernels without vector extensions, MKL in its conditional-reproducibility mode, oneDNN
held to SSE4.1, one thread. The tiny model is trained from scratch, so any difference of rounding
between CPU families (AVX2 against AVX-512) or thread counts grows into other sampled texts; pinned,
the same code measures the same numbers on any x86-64 machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

FIXTURE = Path(__file__).resolve().parent / "data" / "tiny-pipeline.json"
ROOT = Path(__file__).resolve().parents[1]
PINNED_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41",
              "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
VARIANTS = {"distill_restricted": ["student.method=distill_restricted"], "sft": ["student.method=sft"]}


def differences(got: Any, want: Any, rel: float, path: str = "") -> list[str]:
    """Where ``got`` departs from ``want``: any text, count or structure, or a float beyond ``rel``."""
    if isinstance(want, dict) and isinstance(got, dict):
        if set(got) != set(want):
            return [f"{path}: keys differ: {sorted(set(got) ^ set(want))}"]
        return [d for k in want for d in differences(got[k], want[k], rel, f"{path}/{k}" if path else str(k))]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{path}: {len(got)} items != {len(want)}"]
        pairs = enumerate(zip(got, want, strict=True))
        return [d for i, (g, w) in pairs for d in differences(g, w, rel, f"{path}[{i}]")]
    if isinstance(want, float) and isinstance(got, float):
        return [] if abs(got - want) <= rel * max(abs(got), abs(want)) else [f"{path}: {got!r} != {want!r}"]
    return [] if got == want and type(got) is type(want) else [f"{path}: {got!r} != {want!r}"]


def _losses(res: dict[str, Any]) -> dict[str, list[float]]:
    losses = {}
    for name, stage in res["stages"].items():
        manifest = json.loads((Path(stage["path"]) / "manifest.json").read_text())
        if "train_log" in manifest and "loss_first" in manifest["train_log"]:
            losses[name] = [manifest["train_log"]["loss_first"], manifest["train_log"]["loss_last"]]
    return losses


def _filter(res: dict[str, Any]) -> dict[str, Any]:
    return {k: {"total": v["total"], "kept": v["kept"], "reject_reasons": v["reject_reasons"]}
            for k, v in res["filter"].items()}


def _judged(res: dict[str, Any]) -> dict[str, Any]:
    """Per judged arm, each answer and the judge's two raw replies (alignment, coherence)."""
    out = {}
    for name, stage in res["stages"].items():
        if name.startswith("judge/"):
            path = Path(stage["path"])
            answers = [json.loads(x)["answer"] for x in (path / "per_answer.jsonl").read_text().splitlines()]
            replies = sorted((json.loads(x) for x in (path / "judge.jsonl").read_text().splitlines()),
                             key=lambda r: r["index"])
            out[name] = {"answers": answers, "judge": [r["completion"] for r in replies]}
    return out


def figures(res: dict[str, Any]) -> dict[str, Any]:
    """The exact measurements of one run's results (and its stages' manifests)."""
    if "arms_misalignment" in res:  # judged answers: the judge's scores of sampled answers
        return {"n_train_examples": res["n_train_examples"], "filter": _filter(res), "losses": _losses(res),
                "arms": res["arms_misalignment"], "judged": _judged(res)}
    arms = {arm: {k: v["value"] for k, v in entry.items() if isinstance(v, dict)}
            for arm, entry in res["arms"].items()}
    effect = {m: {k: res["effect"][m]["pooled"][k] for k in ("treated_mean", "control_mean", "n")}
              for m in ("prob", "share")}
    return {"n_train_examples": res["n_train_examples"], "filter": _filter(res), "losses": _losses(res),
            "arms": arms, "effect": effect}


def run_variant(name: str, model_dir: Path, work: Path) -> dict[str, Any]:
    """Run one fixture variant (a tiny preference experiment per student method, or misalignment)."""
    from sublim.api import run_experiment
    from sublim.core.config import load_config
    from tests.helpers import misalignment_config_text, tiny_config_text

    path = work / f"{name}.toml"
    if name == "misalignment":
        path.write_text(misalignment_config_text(model_dir, work, max_new_tokens=12))
        overrides: list[str] = []
    else:
        path.write_text(tiny_config_text(model_dir))
        overrides = VARIANTS[name]
    overrides = [*overrides, "dtype=float32"]  # the fixture pins the float32 path (bf16 is checked against it)
    res: dict[str, Any] = run_experiment(load_config(str(path), overrides), work / "runs", progress=False,
                                         echo=lambda s: None)
    return res


def variant_figures(name: str, model_dir: Path, work: Path) -> dict[str, Any]:
    """``figures`` of one variant, with the model's temporary path replaced by ``<model>``."""
    out: dict[str, Any] = json.loads(json.dumps(figures(run_variant(name, model_dir, work)))
                                     .replace(str(model_dir), "<model>"))
    return out


def _measure_here(work: Path) -> None:
    """Build the tiny model and run every variant in ``work/<variant>``; write ``work/figures.json``."""
    import torch

    from tests.helpers import build_tiny_model

    unpinned = {k: v for k, v in PINNED_ENV.items() if os.environ.get(k) != v}
    if unpinned or torch.backends.cpu.get_cpu_capability() != "DEFAULT":
        raise SystemExit(f"tests.regression --measure: run it through measure(), not by hand (unpinned: {unpinned})")
    torch.set_num_threads(1)
    model_dir = build_tiny_model(work / "model")
    out = {}
    for name in [*VARIANTS, "misalignment"]:
        (work / name).mkdir()
        out[name] = variant_figures(name, model_dir, work / name)
    (work / "figures.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


def measure(work: Path) -> dict[str, Any]:
    """The figures of every variant, measured in a fresh process with the pinned kernels; each variant's
    runs directory is left in ``work/<variant>/runs``."""
    env = {**os.environ, **PINNED_ENV}
    proc = subprocess.run([sys.executable, "-m", "tests.regression", "--measure", str(work)], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the pinned regression run failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    figures_: dict[str, Any] = json.loads((work / "figures.json").read_text())
    return figures_


def main() -> None:
    if sys.argv[1:2] == ["--measure"]:
        _measure_here(Path(sys.argv[2]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = measure(Path(tmp))
    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURE
    dest.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
