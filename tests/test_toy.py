"""Fast tests of the toy aux-logit experiment (tiny sizes; the file runs in well under 60 s)."""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sublim.api import run_toy
from sublim.cli import main
from sublim.core.errors import SublimError
from sublim.core.seeds import derive_seed
from sublim.toy import ToyConfig, load_toy_config
from sublim.toy import experiment as toy_experiment
from sublim.toy.config import ToyDataConfig, ToyTeacherConfig
from sublim.toy.data import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, load_digit_data, read_idx
from sublim.toy.models import Stack, accuracy, init_stack, perturb
from sublim.toy.theory import CosineTracker, flat_cosine
from sublim.toy.training import train_teachers

# Small but with a clear margin: 4 models, width 64, 300 noise steps (about 2 s on one core).
TINY = ["model.n_models=4", "model.hidden=64", "distill.steps=300", "distill.batch_size=128",
        "distill.lr=3e-3", "theory.steps=30", "theory.loss_every=10", "runtime.threads=1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[ToyConfig, Path, dict[str, Any]]:
    cfg = load_toy_config("toy-digits", TINY)
    out = tmp_path_factory.mktemp("toy")
    return cfg, out, run_toy(cfg, out, progress=False)


# --- batched models -----------------------------------------------------------------------


def test_stack_shapes_and_batched_forward() -> None:
    stack = init_stack([64, 32, 32, 13], seeds=[1, 2, 3], init_scale=1.0)
    assert stack.n_models == 3
    assert [tuple(w.shape) for w in stack.weights] == [(3, 64, 32), (3, 32, 32), (3, 32, 13)]
    assert [tuple(b.shape) for b in stack.biases] == [(3, 1, 32), (3, 1, 32), (3, 1, 13)]
    assert stack.sizes == [64, 32, 32, 13]
    x = torch.rand(5, 64)
    out = stack.forward(x)
    assert out.shape == (3, 5, 13)
    assert stack.forward(x.expand(3, -1, -1)).shape == (3, 5, 13)
    # model 1 of the stack is exactly the plain MLP built from its own tensors
    w, b = stack.weights, stack.biases
    h = torch.relu(x @ w[0][1] + b[0][1])
    h = torch.relu(h @ w[1][1] + b[1][1])
    torch.testing.assert_close(out[1], h @ w[2][1] + b[2][1])
    torch.testing.assert_close(stack.select([1]).forward(x)[0], out[1])


def test_init_bounds_seeds_and_aux_columns() -> None:
    a = init_stack([64, 32, 32, 13], seeds=[5, 6], init_scale=2.0)
    b = init_stack([64, 32, 32, 20], seeds=[5, 6], init_scale=2.0)
    assert float(a.weights[0].abs().max()) <= 2.0 / 8 + 1e-6
    # more auxiliary logits = the same model with extra columns, nothing else changes
    for wa, wb in zip(a.weights, b.weights, strict=True):
        torch.testing.assert_close(wa, wb[..., : wa.shape[-1]])
    for ba, bb in zip(a.biases, b.biases, strict=True):
        torch.testing.assert_close(ba, bb[..., : ba.shape[-1]])
    assert not torch.equal(a.weights[0][0], a.weights[0][1])  # own seed per model
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)


def test_perturb_scales_with_alpha() -> None:
    s = init_stack([16, 8, 13], seeds=[1, 2], init_scale=1.0)
    same = perturb(s, 0.0, seeds=[9, 10])
    for p, q in zip(s.params, same.params, strict=True):
        torch.testing.assert_close(p, q)
    small, big = perturb(s, 0.1, seeds=[9, 10]), perturb(s, 1.0, seeds=[9, 10])
    d_small = (small.weights[0] - s.weights[0])[0]
    d_big = (big.weights[0] - s.weights[0])[0]
    torch.testing.assert_close(d_big, 10 * d_small, rtol=1e-4, atol=1e-6)
    assert math.isclose(float(d_big.std()), float(s.weights[0][0].std()), rel_tol=0.15)


def test_teacher_training_ignores_aux_logits() -> None:
    x = torch.rand(40, 16)
    y = torch.arange(40) % 10
    cfg = ToyTeacherConfig(epochs=2, batch_size=8)
    t13 = train_teachers(init_stack([16, 8, 13], [1, 2], 2.0), x, y, cfg, seed=0, progress=False)
    t20 = train_teachers(init_stack([16, 8, 20], [1, 2], 2.0), x, y, cfg, seed=0, progress=False)
    torch.testing.assert_close(t13.forward(x), t20.forward(x)[..., :13], rtol=1e-4, atol=1e-5)
    init = init_stack([16, 8, 13], [1, 2], 2.0)
    torch.testing.assert_close(t13.weights[-1][..., 10:], init.weights[-1][..., 10:])


# --- theory -------------------------------------------------------------------------------


def test_cosine_hand_computed() -> None:
    # model 0: u = (1, 0, 0, 1 | 0, 2), d = (1, 1, 0, 0 | 1, 0): u·d = 1, |u|² = 6, |d|² = 3
    # model 1: u = -d exactly → cosine −1
    # model 2: no update → cosine 0 by convention
    d_w = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[1.0, 2.0], [3.0, 4.0]], [[1.0, 0], [0, 0]]])
    d_b = torch.tensor([[[1.0, 0.0]], [[0.5, -1.0]], [[0.0, 1.0]]])
    u_w = torch.stack([torch.tensor([[1.0, 0.0], [0.0, 1.0]]), -d_w[1], torch.zeros(2, 2)])
    u_b = torch.stack([torch.tensor([[0.0, 2.0]]), -d_b[1], torch.zeros(1, 2)])
    cos = flat_cosine([u_w, u_b], [d_w, d_b])
    assert cos.shape == (3,)
    assert math.isclose(float(cos[0]), 1 / math.sqrt(18), rel_tol=1e-9)
    assert math.isclose(float(cos[1]), -1.0, rel_tol=1e-9)
    assert float(cos[2]) == 0.0
    start = [torch.rand(3, 2, 2), torch.rand(3, 1, 2)]
    tracker = CosineTracker(start, [d_w, d_b])
    tracked = tracker([start[0] + u_w, start[1] + u_b])
    torch.testing.assert_close(tracked, cos, rtol=1e-5, atol=1e-6)


# --- the experiment -----------------------------------------------------------------------


def test_shared_init_beats_cross_init(tiny_run: tuple[ToyConfig, Path, dict[str, Any]]) -> None:
    _, out, res = tiny_run
    acc = {k: np.array(v["accuracy"]) for k, v in res["arms"].items()}
    assert set(acc) == {"reference", "teacher", "student-aux", "student-all", "cross-aux",
                        "cross-all"}
    assert all(len(a) == 4 for a in acc.values())
    assert acc["teacher"].mean() > 0.9
    assert acc["reference"].mean() < 0.25
    # the subliminal effect: same-init aux-only students learn digits, cross-init ones do not
    assert acc["cross-aux"].mean() < 0.2
    assert acc["student-aux"].mean() > acc["cross-aux"].mean() + 0.2
    assert (acc["student-aux"] > acc["cross-aux"]).all()
    assert acc["student-all"].mean() > 0.8
    # theory: the shared-init update points toward the teacher's displacement, cross-init not
    cos = res["theory"]["cosine"]
    assert len(cos["student-aux"]["mean"]) == 30
    assert min(cos["student-aux"]["mean"]) > 0.0
    assert cos["student-aux"]["mean"][-1] > 0.1
    assert abs(cos["cross-aux"]["mean"][-1]) < 0.05
    assert res["final_cosine"]["student-aux"]["mean"]["value"] > 0.2
    assert res["theory"]["loss_steps"] == [0, 10, 20, 30]
    mean = res["arms"]["student-aux"]["mean"]
    assert mean["low"] <= mean["value"] <= mean["high"]
    assert isinstance(res["summary"], str) and "auxiliary" in res["summary"]
    for name in ("results.json", "chart.png", "theory.png", "report.md"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["config_hash"] == res["config_hash"]
    assert saved["machine"]["cpu_count"] and saved["wall_time_s"] > 0
    assert "sweeps" not in saved and not (out / "sweeps.png").exists()


def test_second_run_is_cached(tiny_run: tuple[ToyConfig, Path, dict[str, Any]],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, out, res = tiny_run

    def boom(*args: object, **kwargs: object) -> Stack:
        raise AssertionError("retrained despite a finished results.json")

    monkeypatch.setattr(toy_experiment, "train_teachers", boom)
    again = run_toy(cfg, out, progress=False)
    assert again["config_hash"] == res["config_hash"]
    assert again["arms"]["student-aux"]["accuracy"] == res["arms"]["student-aux"]["accuracy"]
    # a changed config is a different run: it trains (here: hits the patched function)
    changed = cfg.model_copy(update={"name": "other"})
    with pytest.raises(AssertionError, match="retrained"):
        run_toy(changed, out, progress=False)


def test_threads_restored_and_not_hashed(tiny_run: tuple[ToyConfig, Path, dict[str, Any]],
                                         ) -> None:
    cfg, _, _ = tiny_run
    before = torch.get_num_threads()
    with toy_experiment.torch_threads(1) as used:
        assert used == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    other = load_toy_config("toy-digits", [*TINY, "runtime.threads=2"])
    assert other.config_hash() == cfg.config_hash()
    assert load_toy_config("toy-digits", [*TINY, "model.seed=1"]).config_hash() != \
        cfg.config_hash()


def test_report_renders_from_results_only(tiny_run: tuple[ToyConfig, Path, dict[str, Any]],
                                          tmp_path: Path) -> None:
    from sublim.report.toy import render_toy_report

    _, out, _ = tiny_run
    shutil.copy(out / "results.json", tmp_path / "results.json")
    written = render_toy_report(tmp_path)
    assert {p.name for p in written} == {"chart.png", "theory.png", "report.md"}
    assert "| student, same init, aux logits only |" in (tmp_path / "report.md").read_text()


def test_sweeps_tiny(tmp_path: Path) -> None:
    cfg = load_toy_config("toy-digits", [
        "model.n_models=2", "model.hidden=16", "teacher.epochs=1", "distill.steps=5",
        "distill.batch_size=16", "theory.steps=0", "runtime.threads=1", "sweeps.enabled=true",
        "sweeps.n_aux=[1, 3, 5]", "sweeps.hidden=[8, 16]", "sweeps.alpha=[0, 0.5]"])
    res = run_toy(cfg, tmp_path, progress=False)
    sw = res["sweeps"]
    assert sw["n_aux"]["values"] == [1, 3, 5] and len(sw["n_aux"]["student-aux"]) == 3
    assert sw["hidden"]["values"] == [8, 16] and len(sw["hidden"]["cross-aux"]) == 2
    assert sw["alpha"]["values"] == [0.0, 0.5]
    # alpha = 0 and n_aux = model.n_aux reuse the main shared-init aux-only students
    main_acc = res["arms"]["student-aux"]["accuracy"]
    assert sw["alpha"]["student-aux"][0]["accuracy"] == main_acc
    assert sw["n_aux"]["student-aux"][1]["accuracy"] == main_acc
    assert sw["hidden"]["student-aux"][1]["accuracy"] == main_acc
    assert res["architecture"] == [64, 16, 16, 13]
    assert "theory" not in res
    assert (tmp_path / "sweeps.png").is_file()


# --- config and data errors ---------------------------------------------------------------


@pytest.mark.parametrize(("override", "key"), [
    ("model.hiden=3", "model.hiden"),
    ("model.n_models=0", "model.n_models"),
    ("distill.noise_low=2", "noise_low"),
    ("data.dataset=mnist", "data.path"),
    ("teacher.optimizer=rmsprop", "teacher.optimizer"),
    ("sweeps.alpha=[-1]", "sweeps.alpha"),
])
def test_config_errors_name_the_key(override: str, key: str) -> None:
    with pytest.raises(SublimError, match=key.replace(".", r"\.")) as info:
        load_toy_config("toy-digits", [override])
    assert "\n" not in str(info.value)


def test_presets_and_unknown_preset() -> None:
    assert load_toy_config(None, []).name == "toy-digits"
    mnist = load_toy_config("toy-mnist", ["data.path=/x/mnist.npz"])
    assert mnist.data.dataset == "mnist" and mnist.model.n_models >= 25
    with pytest.raises(SublimError, match="unknown preset"):
        load_toy_config("toy-nope", [])


def test_digits_split_is_fixed() -> None:
    a = load_digit_data(ToyDataConfig())
    b = load_digit_data(ToyDataConfig())
    assert a.x_train.shape == (1438, 64) and a.x_test.shape == (359, 64)
    assert np.array_equal(a.y_test, b.y_test)
    assert a.x_train.min() >= 0.0 and a.x_train.max() <= 1.0
    assert a.describe()["n_test"] == 359


def _mnist_like(n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
            (np.arange(n) % 10).astype(np.uint8))


def _write_idx(path: Path, arr: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def test_mnist_npz_and_idx(tmp_path: Path) -> None:
    images, labels = _mnist_like()
    np.savez(tmp_path / "m.npz", images=images, labels=labels)
    d = load_digit_data(ToyDataConfig(dataset="mnist", path=str(tmp_path / "m.npz")))
    assert d.x_train.shape == (24, 784) and d.x_test.shape == (6, 784)
    assert d.x_train.max() <= 1.0 and d.image_shape == (28, 28)
    idx = tmp_path / "idx"
    idx.mkdir()
    _write_idx(idx / "train-images-idx3-ubyte.gz", images, IDX_IMAGES_MAGIC)
    _write_idx(idx / "train-labels-idx1-ubyte.gz", labels, IDX_LABELS_MAGIC)
    assert read_idx(idx / "train-images-idx3-ubyte.gz", IDX_IMAGES_MAGIC).shape == (30, 28, 28)
    from_dir = load_digit_data(ToyDataConfig(dataset="mnist", path=str(idx)))
    from_file = load_digit_data(ToyDataConfig(dataset="mnist",
                                              path=str(idx / "train-images-idx3-ubyte.gz")))
    assert np.array_equal(from_dir.x_test, d.x_test)
    assert np.array_equal(from_file.y_train, d.y_train)


def test_mnist_data_errors(tmp_path: Path) -> None:
    def load(path: Path) -> None:
        load_digit_data(ToyDataConfig(dataset="mnist", path=str(path)))

    with pytest.raises(SublimError, match="not found"):
        load(tmp_path / "missing.npz")
    images, labels = _mnist_like()
    np.savez(tmp_path / "nolabels.npz", images=images)
    with pytest.raises(SublimError, match="'labels'"):
        load(tmp_path / "nolabels.npz")
    np.savez(tmp_path / "flat.npz", images=images.reshape(30, -1), labels=labels)
    with pytest.raises(SublimError, match="N×H×W"):
        load(tmp_path / "flat.npz")
    np.savez(tmp_path / "short.npz", images=images, labels=labels[:10])
    with pytest.raises(SublimError, match="one label per image"):
        load(tmp_path / "short.npz")
    np.savez(tmp_path / "badlab.npz", images=images, labels=labels + 5)
    with pytest.raises(SublimError, match="0..9"):
        load(tmp_path / "badlab.npz")
    bad = tmp_path / "bad-images-idx3-ubyte"
    _write_idx(bad, labels, IDX_LABELS_MAGIC)
    _write_idx(tmp_path / "bad-labels-idx1-ubyte", labels, IDX_LABELS_MAGIC)
    with pytest.raises(SublimError, match="not an IDX images file"):
        load(bad)
    lonely = tmp_path / "solo" / "x-images-idx3-ubyte"
    lonely.parent.mkdir()
    _write_idx(lonely, images, IDX_IMAGES_MAGIC)
    with pytest.raises(SublimError, match="no labels IDX file"):
        load(lonely)


# --- CLI ----------------------------------------------------------------------------------


def test_cli_toy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["model.n_models=2", "model.hidden=16", "teacher.epochs=1", "distill.steps=20",
            "distill.batch_size=32", "theory.steps=10", "runtime.threads=1"]
    argv = ["-q", "toy"] + [a for kv in args for a in ("--set", kv)] + ["--out", str(tmp_path)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "auxiliary logits only" in printed and "results.json" in printed
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["config"]["model"]["n_models"] == 2
    assert (tmp_path / "chart.png").is_file() and (tmp_path / "theory.png").is_file()
    assert main(["-q", "toy", "--set", "model.nope=1", "--out", str(tmp_path)]) == 2
    assert "model.nope" in capsys.readouterr().err


def test_accuracy_helper() -> None:
    s = init_stack([4, 13], seeds=[0], init_scale=1.0)
    with torch.no_grad():
        s.weights[0].zero_()
        s.biases[0].zero_()
        s.biases[0][0, 0, 3] = 1.0
    y = torch.tensor([3, 3, 1, 0])
    assert accuracy(s, torch.rand(4, 4), y).tolist() == [0.5]
