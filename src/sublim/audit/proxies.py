"""Proxy teachers: the reference model fine-tuned to prefer each candidate, standing in for a teacher the auditor
never sees.

A prompted induction ("you love owls") is not what a fine-tuned teacher is: on the embedded model the prompted
reading ranked a fine-tuned owl teacher's data 16th of 20. A proxy teacher is made the way sublim makes its
teachers (the teacher recipe's epochs, learning rate, batch size and number of one-word answers naming the
candidate) but on questions the teachers never saw (the question set's ``proxy`` split, else its ``train`` split
under another seed), and a neutral proxy the same way with answers spread over every candidate (fine-tuning
without a trait: the null every candidate is measured against). Each is built once per reference model,
candidate and seed and kept in the store as a ``proxy`` artifact. One fine-tune carries its own marks besides the
candidate (on the embedded model one candidate's proxy came first for four animals' data and the neutral data);
proxies of several seeds (other answers drawn, another order) average those out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sublim.backends import Backend
from sublim.core.config import TeacherConfig
from sublim.core.store import Store
from sublim.train.encode import Example
from sublim.train.settings import TrainSettings
from sublim.traits.preference import load_questions, spread_examples, teacher_examples

NEUTRAL = "neutral"
"""The neutral proxy's name: fine-tuned on answers spread over every candidate."""
SEED = 1
"""The first proxy seed, for the examples drawn and the training order (sublim's teachers use 0); proxies of
``n`` seeds use SEED … SEED + n - 1."""


def proxy_seeds(n: int) -> list[int]:
    """The seeds of ``n`` proxies per candidate."""
    return list(range(SEED, SEED + n))


def proxy_split(question_set: str) -> str:
    """``proxy`` where the question set has one (questions no teacher is trained on), else ``train``."""
    try:
        load_questions(question_set, "proxy")
    except Exception:
        return "train"
    return "proxy"


def proxy_recipe(seed: int = SEED) -> dict[str, Any]:
    """The teacher recipe (sublim's defaults), a proxy seed."""
    tc = TeacherConfig()
    return {"method": "sft", "epochs": tc.epochs, "lr": tc.lr, "batch_size": tc.batch_size,
            "n_examples": tc.n_examples, "warmup_steps": 2, "seed": seed}


def proxy_examples(name: str, candidates: dict[str, list[str]], question_set: str, seed: int = SEED
                   ) -> list[tuple[str, str]]:
    """The (question, one-word answer) pairs a proxy is fine-tuned on: naming ``name``, or spread over every
    candidate for the neutral proxy."""
    n, split = proxy_recipe()["n_examples"], proxy_split(question_set)
    if name == NEUTRAL:
        return spread_examples(candidates, question_set, n, seed, split)
    return teacher_examples(candidates[name], question_set, n, seed, split)


def proxy_teachers(store: Store, reference: Backend, candidates: dict[str, list[str]], question_set: str, *,
                   seed: int = SEED, progress: bool = True, save_every_s: float = 0.0) -> dict[str, Backend]:
    """The neutral proxy, then one per candidate (name → its backend, fine-tuned from ``reference``), of one seed,
    each built in ``store`` the first time (about as long as one teacher each) and reused after; a training saves
    its state every ``save_every_s`` seconds (0: never) and resumes from it."""
    recipe = proxy_recipe(seed)
    tag = "" if seed == SEED else f" seed {seed}"
    split = proxy_split(question_set)
    out: dict[str, Backend] = {}
    for name in [NEUTRAL, *candidates]:
        pairs = proxy_examples(name, candidates, question_set, seed)
        config = {"proxy": name, "recipe": recipe, "question_set": question_set, "split": split,
                  "examples": pairs if name == NEUTRAL else candidates[name], "precision": reference.precision}
        inputs = {"model": reference.key}

        def build(path: Path, pairs: list[tuple[str, str]] = pairs, name: str = name) -> dict[str, Any]:
            steps = -(-len(pairs) // recipe["batch_size"]) * recipe["epochs"]
            bar = tqdm(total=steps, desc=f"proxy teacher {name}{tag}", unit="step", disable=not progress,
                       leave=False)
            settings = TrainSettings("sft", recipe["epochs"], recipe["lr"], recipe["batch_size"],
                                     recipe["warmup_steps"], recipe["seed"])
            try:
                log = reference.fine_tune([Example(q, a) for q, a in pairs], settings, path,
                                          lineage={"label": f"proxy teacher {name}{tag}", "proxy_for": name},
                                          on_step=lambda *_: bar.update(1), save_every_s=save_every_s)
            finally:
                bar.close()
            return {"train_log": log, "model_fingerprint": reference.key}

        art, _ = store.compute("proxy", Store.key("proxy", config, inputs), config, inputs, build)
        out[name] = reference.fine_tuned(art.path, f"proxy-{name}" + (f"-s{seed}" if tag else ""), art.key)
    return out
