"""What every stage of a run shares: the config, the store, the loaded models, progress output.

A stage is a function of (its config slice, its input artifacts' keys, a seed) that returns a
finished artifact. :meth:`Context.stage` is the one rule that makes that true: the artifact's key
hashes the stage name, the slice and the inputs; a finished artifact with that key is verified and
reused; otherwise its directory (kept across interruptions, so a stage can resume) is handed to
the stage's ``build``, and the manifest is written last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from sublim.backends import Backend, LocalBackend, ModelCache, OpenAIBackend
from sublim.core.claims import Holder
from sublim.core.config import EndpointConfig, ExperimentConfig, keyed
from sublim.core.store import Artifact, Store
from sublim.core.tracking import Tracking


def precision_slice(*backends: Backend) -> dict[str, Any]:
    """The device class and precision the backends compute in, for the key of a stage whose output depends on
    them (None for models behind an API; the key leaves out None and a CPU in float32: ``keyed``)."""
    found = sorted({p for b in backends if (p := b.precision)})
    return {"precision": found[0] if len(found) == 1 else (found or None)}


Build = Callable[[Path], dict[str, Any]]


class StageHook(Protocol):
    """Where a stage's work happens instead of in this process (an executor's): returns the finished artifact
    and whether this call built it."""

    def __call__(self, ctx: Context, stage: str, key: str, config: dict[str, Any], inputs: dict[str, str],
                 label: str, build: Build) -> tuple[Artifact, bool]: ...


def model_cache(cfg: ExperimentConfig, echo: Callable[[str], None]) -> ModelCache:
    templates = {cfg.arms.cross_model: cfg.arms.cross_model_chat_template} \
        if cfg.arms.cross_model and cfg.arms.cross_model_chat_template else {}
    return ModelCache(cfg.device, echo, templates, cfg.dtype)


@dataclass
class Context:
    cfg: ExperimentConfig
    store: Store
    progress: bool = True
    echo: Callable[[str], None] = print
    models: ModelCache = None  # type: ignore[assignment]
    """Loaded models (default: a new cache for this run; an executor's worker passes the one it keeps)."""
    hook: StageHook | None = None
    """Where stages are computed (default: here, under the store's claims)."""
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    """Every artifact this run used, as "stage/label" → artifact (provenance and timings)."""
    tracking: Tracking | None = None
    """Where training curves and results are also sent (TensorBoard, MLflow, W&B), if anywhere."""

    def __post_init__(self) -> None:
        if self.models is None:
            self.models = model_cache(self.cfg, self.echo)

    def stage(self, stage: str, config: dict[str, Any], inputs: dict[str, str], label: str,
              build: Callable[[Path], dict[str, Any]]) -> Artifact:
        """The finished artifact of (stage, config, inputs): reused when it exists, else built.

        ``build(path)`` writes the artifact's files into ``path`` and returns what else the manifest
        records (counts, timings, the model's description).
        """
        config = keyed(config, "stage")  # settings added later, at their earlier value, leave the key as it was
        key = Store.key(stage, config, inputs)
        if self.hook is not None:
            done, built = self.hook(self, stage, key, config, inputs, label, build)
        else:
            def waiting(holder: Holder) -> None:
                self.echo(f"  … {stage:<9} {label}: waiting for {holder}, which is computing it")

            done, built = self.store.compute(stage, key, config, inputs, build, on_wait=waiting, label=label)
        self.echo(f"  ✓ {stage:<9} {label} ({done.manifest['wall_time_s']:.0f} s)" if built else
                  f"  ✓ {stage:<9} {label} (cached)")
        self.artifacts[f"{stage}/{label}"] = done
        return done

    def local(self, spec: str, label: str | None = None) -> LocalBackend:
        """A base model in this process."""
        return LocalBackend(self.models, spec, label=label)

    def remote(self, ep: EndpointConfig, system: str | None = None, label: str | None = None) -> OpenAIBackend:
        """A model behind an OpenAI-compatible endpoint."""
        return OpenAIBackend(ep, system=system, label=label)

    def track(self, prefix: str, metrics: dict[str, float], step: int | None = None) -> None:
        if self.tracking is not None:
            self.tracking.log(prefix, metrics, step)

    def bar(self, total: int, desc: str, unit: str = "it") -> tqdm:
        return tqdm(total=total, desc=desc, unit=unit, disable=not self.progress, dynamic_ncols=True, leave=False)
