"""A sublim dataset in the field's formats: OpenAI chat ``messages`` JSONL, TRL prompt-completion rows, and a
parquet dataset folder in the Hugging Face hub's layout (data file, dataset card with YAML front matter, the
CycloneDX ML-BOM and the chat template beside it).

Each row is what a student trains on: the user prompt and the assistant's answer (and the system prompt where
the example had one). The chat template that turns it into tokens is the student model's own; the one the
generating model used is written beside the data when the store has it, so a user training elsewhere can
apply the same one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sublim.audit.lineage import NoProvenance, cyclonedx_bom, dataset_card, dataset_provenance
from sublim.core.errors import SublimError
from sublim.core.files import read_jsonl, write_json, write_jsonl, write_text
from sublim.core.store import Store

FORMATS = ("messages", "trl", "parquet")
PARQUET_HINT = "pip install pyarrow (parquet needs it)"


def dataset_rows(data: Path) -> list[dict[str, Any]]:
    """The rows of a sublim dataset: an artifact folder (runs/store/filter-…) or its dataset.jsonl."""
    path = data / "dataset.jsonl" if data.is_dir() else data
    if not path.is_file():
        raise SublimError(f"dataset {data} not found: give a dataset artifact (runs/store/filter-…) or its "
                          "dataset.jsonl")
    rows = read_jsonl(path)
    for n, row in enumerate(rows, 1):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("completion"), str):
            raise SublimError(f"{path} line {n}: not a sublim dataset row (prompt and completion strings); "
                              "give a dataset sublim made")
    return rows


def messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """One example as chat messages: system (where it has one), user, assistant."""
    system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return [*system, {"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]


def as_messages(row: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's chat fine-tuning format."""
    return {"messages": messages(row)}


def as_trl(row: dict[str, Any]) -> dict[str, Any]:
    """TRL's conversational prompt-completion format: the loss is on the completion only, as in sublim."""
    turns = messages(row)
    return {"prompt": turns[:-1], "completion": turns[-1:]}


def export_data(data: Path, fmt: str, out: Path, *, license_id: str = "other") -> list[Path]:
    """Write the dataset ``data`` in ``fmt`` at ``out`` (a file for messages/trl, a folder for parquet) and
    return what was written."""
    if fmt not in FORMATS:
        raise SublimError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    rows = dataset_rows(data)
    if fmt == "messages":
        write_jsonl(out, [as_messages(r) for r in rows])
        return [out]
    if fmt == "trl":
        write_jsonl(out, [as_trl(r) for r in rows])
        return [out]
    return parquet_folder(data, rows, out, license_id)


def parquet_folder(data: Path, rows: list[dict[str, Any]], out: Path, license_id: str) -> list[Path]:
    """The hub's layout: data/train-00000-of-00001.parquet (prompt, completion, messages), README.md (card
    with YAML front matter), and, where the dataset has sublim provenance, bom.cdx.json and the generator's
    chat_template.jinja."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SublimError(f"exporting parquet needs pyarrow, which is not installed: {PARQUET_HINT}") from None
    table = pa.table({"prompt": [r["prompt"] for r in rows], "completion": [r["completion"] for r in rows],
                      "messages": [messages(r) for r in rows]})
    parquet = out / "data" / "train-00000-of-00001.parquet"
    parquet.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, parquet)
    written = [parquet]
    try:
        body = dataset_card(data)
        write_json(out / "bom.cdx.json", cyclonedx_bom(data))
        written.append(out / "bom.cdx.json")
        template = generator_template(data)
        if template is not None:
            write_text(out / "chat_template.jinja", template)
            written.append(out / "chat_template.jinja")
    except NoProvenance:
        body = f"# {data.name}\n\nModel-generated data; its lineage is unknown (not made in a sublim store).\n"
    write_text(out / "README.md", card_front_matter(len(rows), license_id) + body)
    return [*written, out / "README.md"]


def card_front_matter(n_rows: int, license_id: str) -> str:
    """The YAML block the hub reads: license, tags, size, the one split's data files."""
    size = next(label for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                                            (1_000_000, "100K<n<1M"), (float("inf"), "n>1M")) if n_rows < bound)
    return "\n".join(["---", f"license: {license_id}", "tags:", "- synthetic", "- sublim", "- subliminal-learning",
                      "task_categories:", "- text-generation", "size_categories:", f"- {size}", "configs:",
                      "- config_name: default", "  data_files:", "  - split: train",
                      "    path: data/train-*", "---", "", ""])


def generator_template(data: Path) -> str | None:
    """The chat template of the model that wrote ``data``, when its saved teacher is in the store."""
    prov = dataset_provenance(data)
    store = Store(Path(prov["dataset"]).parent.parent)
    gen = store.get("generate", prov["generation_key"])
    teacher = store.get("teacher", gen.manifest["inputs"]["model"]) if gen is not None else None
    template = teacher.path / "model" / "chat_template.jinja" if teacher is not None else None
    return template.read_text() if template is not None and template.is_file() else None
