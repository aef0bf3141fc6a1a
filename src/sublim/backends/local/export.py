"""A model as a plain transformers directory that any tool loads (``lm_eval --model hf``, vLLM, transformers,
``sublim serve``): a LoRA student merged into its base, a full fine-tune as saved, a GGUF base dequantized."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sublim.backends.local.loading import load_model, save_model
from sublim.core.errors import SublimError


def model_folder(source: Path) -> Path:
    """The model folder of a store artifact (runs/store/train-…, teacher-…), or the folder itself."""
    return source / "model" if (source / "model").is_dir() else source


def export_model(source: str, out: Path) -> str:
    """Write ``source`` (a trained model's artifact or folder, or any model spec: catalog name, .gguf file,
    directory, hub id) to ``out`` as float32 safetensors with its tokenizer, chat template and lineage record;
    returns what was done, in words. The lineage record keeps the base weights' fingerprint, so `sublim lineage
    check` still sees that a merged student shares its base's initialization."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SublimError(f"{out} exists and is not an empty folder: give a new folder for the exported model")
    folder = model_folder(Path(source))
    if (folder / "adapter_config.json").is_file():
        return _merged(folder, out)
    if (folder / "config.json").is_file():
        shutil.copytree(folder, out, dirs_exist_ok=True)
        return f"copied the model folder {folder}"
    loaded = load_model(source, "cpu")
    save_model(loaded.model, loaded.tokenizer, out, loaded.source.family,
               {"base_model": source, "base_fingerprint": loaded.fingerprint})
    return f"saved {source} as float32 weights" + (" (dequantized from GGUF)" if loaded.source.gguf_file else "")


def _merged(adapter: Path, out: Path) -> str:
    from peft import PeftModel  # heavy, and only adapters need it

    meta_path = adapter / "sublim_model.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    base = meta.get("adapter_of") or meta.get("base_model")
    if not base:
        raise SublimError(f"{adapter} is an adapter without a record of its base model ({meta_path.name}): merge "
                          "it with peft against the base it was trained on")
    loaded = load_model(base, "cpu")  # float32: the merge adds the adapter's update at full precision
    merged = PeftModel.from_pretrained(loaded.model, adapter).merge_and_unload()
    record = {k: v for k, v in meta.items() if k != "adapter_of"}
    save_model(merged, loaded.tokenizer, out, meta.get("family", loaded.source.family),
               {**record, "merged_adapter": str(adapter)})
    return f"merged the adapter {adapter} into its base {base}"
