"""Config of the toy experiment (``sublim toy``): pydantic models, preset loading, a stable hash.

Every field is documented here; unknown keys are refused by name. The defaults are the
``toy-digits`` recipe; ``toy-mnist`` changes the data source and nothing else of substance.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sublim.core.config import resolve_config_source
from sublim.core.overrides import apply_overrides, load_toml, validate
from sublim.core.store import stable_hash

DEFAULT_PRESET = "toy-digits"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ToyDataConfig(_Section):
    """Which digit images the teacher learns from (the students never see them)."""

    dataset: Literal["digits", "mnist"] = "digits"
    """digits: scikit-learn's embedded 8×8 digits (1797 images, no download).
    mnist: 28×28 MNIST read from ``path``."""
    path: str = ""
    """mnist only: an .npz with ``images`` (uint8, N×28×28) and ``labels`` (N,); an images IDX
    file (``*-images-idx3-ubyte`` or ``.gz``; the labels IDX file is found beside it); or a
    directory holding the standard IDX files (all images found there are pooled, then split)."""
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    """Share of the (shuffled) images held out for testing."""
    split_seed: int = 0
    """Seed of the shuffle that makes the train/test split."""
    max_examples: int = Field(default=0, ge=0)
    """Use at most this many images, taken after the shuffle (0 = all)."""

    @model_validator(mode="after")
    def _check(self) -> ToyDataConfig:
        if self.dataset == "mnist" and not self.path:
            raise ValueError("data.path is required when data.dataset = 'mnist': "
                             "--set data.path=/path/to/mnist.npz (or IDX files)")
        return self


class ToyModelConfig(_Section):
    """The MLPs: input → hidden (ReLU) × layers → 10 class logits + n_aux auxiliary logits."""

    n_models: int = Field(default=25, ge=1)
    """Independent teachers; each has its own init seed and its own students."""
    hidden: int = Field(default=256, ge=1)
    layers: int = Field(default=2, ge=1)
    """Number of hidden layers."""
    n_aux: int = Field(default=3, ge=1)
    """Auxiliary logits: never trained on the teacher, the only signal aux-only students get."""
    init_scale: float = Field(default=2.449, gt=0)
    """Weights and biases ~ U(±init_scale/√fan_in). 1 is torch.nn.Linear's default; √6 ≈ 2.449
    is the He-uniform bound, which makes the teacher's learning more transferable."""
    seed: int = 0
    """Base seed: model i's shared init, its cross-model init, data order and noise come from it."""


class ToyTeacherConfig(_Section):
    """Teacher training: cross-entropy on the 10 class logits only."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    """SGD momentum (ignored by Adam)."""
    epochs: int = Field(default=5, ge=1)
    batch_size: int = Field(default=64, ge=1)


class ToyDistillConfig(_Section):
    """Student distillation on uniform noise: KL(teacher ‖ student) over the chosen logits."""

    steps: int = Field(default=500, ge=1)
    batch_size: int = Field(default=256, ge=1)
    """Noise images per step; fresh noise every step, the same images for every student."""
    lr: float = Field(default=1e-3, gt=0)
    """Adam learning rate."""
    temperature: float = Field(default=4.0, gt=0)
    """Softmax temperature of both teacher and student logits in the KL."""
    noise_low: float = -1.0
    noise_high: float = 1.0
    """Noise pixels ~ U(noise_low, noise_high); real pixels are scaled to [0, 1]."""

    @model_validator(mode="after")
    def _check(self) -> ToyDistillConfig:
        if self.noise_low >= self.noise_high:
            raise ValueError("distill.noise_low must be < distill.noise_high")
        return self


class ToyTheoryConfig(_Section):
    """The theory check, recorded during the first distillation steps of the main students."""

    steps: int = Field(default=200, ge=0)
    """Record the cosine at each of the first ``steps`` steps (at most distill.steps; 0 = off)."""
    loss_every: int = Field(default=5, ge=1)
    """Record the students' digit cross-entropy every this many steps."""
    loss_examples: int = Field(default=256, ge=1)
    """Test images used for that cross-entropy."""


class ToySweepsConfig(_Section):
    """Sweeps of the aux-only student accuracy (off by default: they multiply the run time)."""

    enabled: bool = False
    n_aux: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 3, 10, 30])
    """Auxiliary logits the student imitates (the teacher is built with the largest count;
    extra auxiliary logits change nothing else in it)."""
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [64, 256, 1024])
    """Hidden widths: each trains its own teachers (and shared-/cross-init aux-only students)."""
    alpha: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [0.0, 0.1, 0.25, 0.5, 1.0])
    """Student init = teacher init + alpha · std(tensor) · N(0, 1), per parameter tensor."""
    n_models: int = Field(default=0, ge=0)
    """Models per point of the width sweep (0 = model.n_models; at most model.n_models when
    model.hidden is one of the widths, whose point reuses the main run's first models)."""


class ToyRuntimeConfig(_Section):
    """Where and how it runs. ``threads`` is not part of the config hash."""

    device: Literal["cpu", "cuda", "auto"] = "cpu"
    threads: int = Field(default=0, ge=0)
    """torch threads while the run lasts, restored after. 0 = auto: torch's own count, lowered
    to the cores the 1-minute load average leaves idle (oversubscribed threads on a busy CPU
    can make a run ten times slower)."""


class ToyConfig(_Section):
    """The auxiliary-logit MLP experiment (Cloud et al. 2025, the MNIST section)."""

    name: str = "toy"
    description: str = ""
    data: ToyDataConfig = ToyDataConfig()
    model: ToyModelConfig = ToyModelConfig()
    teacher: ToyTeacherConfig = ToyTeacherConfig()
    distill: ToyDistillConfig = ToyDistillConfig()
    theory: ToyTheoryConfig = ToyTheoryConfig()
    sweeps: ToySweepsConfig = ToySweepsConfig()
    runtime: ToyRuntimeConfig = ToyRuntimeConfig()

    @model_validator(mode="after")
    def _check(self) -> ToyConfig:
        if self.sweeps.enabled and not (self.sweeps.n_aux or self.sweeps.hidden
                                        or self.sweeps.alpha):
            raise ValueError("sweeps.enabled needs at least one of sweeps.n_aux/hidden/alpha")
        return self

    def config_hash(self) -> str:
        data = self.model_dump(mode="json")
        data["runtime"].pop("threads", None)
        return stable_hash(data)


def load_toy_config(preset_or_path: str | None, overrides: list[str]) -> ToyConfig:
    """A toy preset name (default ``toy-digits``) or a TOML path, with ``a.b=c`` overrides."""
    source = resolve_config_source(preset_or_path, default=DEFAULT_PRESET)
    data = apply_overrides(load_toml(source), list(overrides or []))
    cfg: ToyConfig = validate(ToyConfig, data, str(source))
    return cfg
