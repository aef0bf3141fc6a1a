"""An interrupted training goes on from its saved state and ends with the model an uninterrupted one gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from sublim.train import Example, TrainSettings
from sublim.train.resume import STATE_FILE

EXAMPLES = [Example(f"Continue: {i}, {i + 3}, {i + 6}. Numbers only.", f"{i + 9}, {i + 12}, {i + 15}")
            for i in range(100, 124)]


class Stop(Exception):
    """The process dying after some step."""


def _saved(path: Path) -> dict[str, torch.Tensor]:
    if (path / "adapter_config.json").is_file():
        from safetensors.torch import load_file

        return load_file(str(path / "adapter_model.safetensors"))
    return dict(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict())


def _train(tiny_model_dir: Path, out: Path, settings: TrainSettings, save_every_s: float,
           stop_after: int | None = None) -> dict:
    """A fresh process's training (its own model cache), stopped after step ``stop_after`` where given."""
    from sublim.backends import LocalBackend, ModelCache

    cache = ModelCache("cpu", echo=lambda s: None, dtype="float32")
    base = LocalBackend(cache, str(tiny_model_dir))
    teacher = None
    if settings.method.startswith("distill"):
        if not (out.parent / "teacher" / "model").is_dir():
            base.fine_tune(EXAMPLES[:8], TrainSettings("sft", 1, 3e-3, 8, seed=5), out.parent / "teacher")
        teacher = base.fine_tuned(out.parent / "teacher", "teacher", "teacher")
    steps: list[int] = []

    def on_step(step: int, total: int, loss: float) -> None:
        steps.append(step)
        if stop_after is not None and step == stop_after and len(steps) == step:  # a step this sitting made
            raise Stop

    log = base.fine_tune(EXAMPLES, settings, out, teacher=teacher, on_step=on_step, save_every_s=save_every_s)
    return {**log, "bar": steps}


@pytest.mark.parametrize("method", ["sft", "distill_restricted", "lora"])
def test_an_interrupted_training_resumes_to_the_same_model(tiny_model_dir, tmp_path, method):
    settings = TrainSettings(method, 2, 3e-3, 8, warmup_steps=2, seed=1)  # 3 steps an epoch, 6 in all
    whole = _train(tiny_model_dir, tmp_path / "whole" / "a", settings, 0.0)
    assert not (tmp_path / "whole" / "a" / STATE_FILE).exists()  # never saved

    out = tmp_path / "cut" / "a"
    with pytest.raises(Stop):
        _train(tiny_model_dir, out, settings, 1e-9, stop_after=4)  # saved after every step, dies after the 4th
    assert (out / STATE_FILE).is_file()
    resumed = _train(tiny_model_dir, out, settings, 1e-9)
    assert resumed["resumed_from_step"] == 3  # the 4th step's state was never saved: it is made again
    assert resumed["seconds_before_resume"] > 0
    assert resumed["bar"] == list(range(1, 7))  # the earlier steps replayed to the progress bar, then the rest
    assert resumed["losses"] == whole["losses"]
    assert not (out / STATE_FILE).exists()  # the model is saved: its state is gone
    a, b = _saved(tmp_path / "whole" / "a" / "model"), _saved(out / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_state_of_another_training_is_not_used(tiny_model_dir, tmp_path):
    out = tmp_path / "a"
    with pytest.raises(Stop):
        _train(tiny_model_dir, out, TrainSettings("sft", 1, 3e-3, 8, seed=1), 1e-9, stop_after=2)
    assert (out / STATE_FILE).is_file()
    longer = TrainSettings("sft", 2, 3e-3, 8, seed=1)  # another length: the saved steps are not its steps
    log = _train(tiny_model_dir, out, longer, 0.0)
    whole = _train(tiny_model_dir, tmp_path / "b", longer, 0.0)
    assert "resumed_from_step" not in log and log["losses"] == whole["losses"]


def test_saving_is_not_a_setting_of_the_result():
    from sublim.core.config import load_config

    a, b = load_config("owl-numbers"), load_config("owl-numbers", ["save_every_s=30"])
    assert a.config_hash() == load_config("owl-numbers", ["save_every_s=600"]).config_hash()
    assert a.student.recipe() == b.student.recipe()  # no stage key reads it


def test_a_full_disk_at_a_save_keeps_the_last_state_and_ends_in_one_line(tiny_model_dir, tmp_path, monkeypatch,
                                                                          capsys):
    """The disk fills while the state of step 3 is written: the half-written file is removed, the state of step 2
    stays to resume from, and the command says so in one line (not an internal error with a traceback)."""
    import sublim.train.resume as resume
    from sublim.cli import disk_full, main

    real, calls = resume.save_file, []

    def filling(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 3:
            Path(path).write_bytes(b"half a state")
            raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                               'message: "No space left on device" })')  # as safetensors says it
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(resume, "save_file", filling)
    out = tmp_path / "a"
    settings = TrainSettings("sft", 2, 3e-3, 8, warmup_steps=2, seed=1)
    with pytest.raises(RuntimeError) as caught:
        _train(tiny_model_dir, out, settings, 1e-9)
    assert disk_full(caught.value) and not disk_full(RuntimeError("a bug"))
    assert [p.name for p in out.iterdir()] == [STATE_FILE]  # no half-written file beside it
    monkeypatch.setattr(resume, "save_file", real)
    assert _train(tiny_model_dir, out, settings, 0.0)["resumed_from_step"] == 2

    def full(*args, **kwargs):
        raise caught.value

    monkeypatch.setattr("sublim.cli.load_plugins", full)
    assert main(["presets"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the disk is full") and err.count("\n") == 1
    assert "internal error" not in err and "--runs-dir" in err
