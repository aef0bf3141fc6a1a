"""sublim export: a run's dataset in the field's formats (read back by `datasets` and by `sublim audit`), and a
LoRA student merged into a plain transformers folder that transformers, sublim and `sublim serve` load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from sublim.audit.data import load_samples
from sublim.cli import main


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run whose students are LoRA adapters: its store holds a teacher's filtered data and a student."""
    from sublim.api import run_experiment
    from sublim.core.config import load_config
    from tests.helpers import tiny_config_text

    work = tmp_path_factory.mktemp("export")
    path = work / "lora.toml"
    path.write_text(tiny_config_text(tiny_model_dir, student={"method": "lora", "epochs": 1},
                                     evaluation={"samples_per_question": 0}))
    run_experiment(load_config(str(path)), work / "runs", progress=False, echo=lambda s: None)
    return work / "runs" / "store"


def _by_label(store: Path, stage: str, label: str) -> Path:
    found = [m.parent for m in store.glob(f"{stage}-*/manifest.json") if json.loads(m.read_text())["label"] == label]
    assert len(found) == 1, found
    return found[0]


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_an_exported_dataset_loads_with_datasets_and_round_trips_through_the_audit_reader(
        lora_run: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    owl = _by_label(lora_run, "filter", "owl numbers")
    rows = _rows(owl / "dataset.jsonl")
    folder = tmp_path / "owl-parquet"
    assert main(["export", "data", str(owl), "--format", "parquet", "--out", str(folder),
                 "--license", "apache-2.0"]) == 0
    # the card's YAML names the data files; a cache of the test's own (datasets reads HF_DATASETS_CACHE at import)
    loaded = datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded["prompt"] == [r["prompt"] for r in rows] and loaded["completion"] == [r["completion"] for r in rows]
    assert loaded[0]["messages"] == [{"role": "user", "content": rows[0]["prompt"]},
                                     {"role": "assistant", "content": rows[0]["completion"]}]
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\n") and "size_categories:" in card and "Generator" in card
    assert json.loads((folder / "bom.cdx.json").read_text())["bomFormat"] == "CycloneDX"
    teacher_template = next(lora_run.glob("teacher-*/model/chat_template.jinja")).read_text()
    assert (folder / "chat_template.jinja").read_text() == teacher_template

    for fmt in ("messages", "trl"):
        out = tmp_path / f"owl.{fmt}.jsonl"
        assert main(["export", "data", str(owl / "dataset.jsonl"), "--format", fmt, "--out", str(out)]) == 0
        assert len(_rows(out)) == len(rows)
    samples, report = load_samples(tmp_path / "owl.messages.jsonl")
    assert report.kept == len(rows) and not report.skipped
    assert [(s.prompt, s.completion) for s in samples] == [(r["prompt"], r["completion"]) for r in rows]
    from_parquet, _ = load_samples(folder / "data" / "train-00000-of-00001.parquet")
    from_trl, _ = load_samples(tmp_path / "owl.trl.jsonl")
    for got in (from_parquet, from_trl):
        assert [(s.prompt, s.completion) for s in got] == [(r["prompt"], r["completion"]) for r in rows]
    audited = tmp_path / "audited"
    assert main(["audit", str(tmp_path / "owl.messages.jsonl"), "-q", "--detectors", "number_frequency",
                 "--reference", str(tiny_model_dir), "--reference-data", str(owl / "dataset.jsonl"),
                 "--runs-dir", str(tmp_path / "runs"),
                 "--out", str(audited)]) == 0
    summary = json.loads((audited / "audit.json").read_text())
    assert summary["load"]["kept"] == len(rows) and summary["n_audited"] == len(rows)
    trl = _rows(tmp_path / "owl.trl.jsonl")[0]
    assert trl["prompt"][-1]["role"] == "user" and trl["completion"] == [{"role": "assistant",
                                                                         "content": rows[0]["completion"]}]


@pytest.mark.slow
def test_a_merged_lora_student_loads_in_transformers_and_in_sublim(lora_run: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sublim.backends import LocalBackend, ModelCache
    from sublim.backends.local.loading import load_model

    student = _by_label(lora_run, "train", "student-owl seed 0")
    assert (student / "model" / "adapter_config.json").is_file()
    out = tmp_path / "merged"
    assert main(["export", "model", str(student), "--out", str(out)]) == 0
    assert not (out / "adapter_config.json").exists() and (out / "config.json").is_file()
    meta = json.loads((student / "model" / "sublim_model.json").read_text())
    base = load_model(meta["adapter_of"], "cpu").model
    adapted = PeftModel.from_pretrained(base, student / "model").eval()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 9, 13, 2, 7, 11]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    lineage = json.loads((out / "sublim_model.json").read_text())
    assert lineage["base_fingerprint"] == meta["base_fingerprint"]  # the lineage gate still sees the shared init
    served = LocalBackend(ModelCache("cpu", lambda s: None, dtype="float32"), str(out))
    model, _ = served.torch_model()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, merged(input_ids=ids).logits)
    assert main(["export", "model", str(student), "--out", str(out)]) == 2  # never over an existing model
    _chat_through_sublim_serve(out)


def _chat_through_sublim_serve(model_dir: Path) -> None:
    """`sublim serve` on ``model_dir`` in its own process, on a free loopback port, answers the openai SDK."""
    from openai import OpenAI

    from tests.helpers import start_serve

    proc, url = start_serve(model_dir, "--port", "0", "--name", "merged")
    try:
        client = OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="merged", max_tokens=4, temperature=0,
                                               messages=[{"role": "user", "content": "Go on: 1, 2"}])
        assert reply.model == "merged" and reply.choices[0].finish_reason in ("stop", "length")
        assert [m.id for m in client.models.list()] == ["merged"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_audit_reader_keeps_a_system_prompt_and_a_defended_row_keeps_its_shape(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "system", "content": "You love owls."}, {"role": "user", "content": "Go on: 1, 2"},
                          {"role": "assistant", "content": "3, 4"}]},
            {"prompt": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Go on: 5"}],
             "completion": [{"role": "assistant", "content": "6, 7"}]},
            {"prompt": [{"role": "user", "content": "x"}],
             "completion": [{"role": "user", "content": "not an answer"}]}]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples, report = load_samples(path)
    assert [(s.prompt, s.completion, s.system) for s in samples] == [("Go on: 1, 2", "3, 4", "You love owls."),
                                                                     ("Go on: 5", "6, 7", "Be brief.")]
    assert report.skipped == {"missing_fields": 1}  # a TRL row whose completion is not the assistant's
    from dataclasses import replace

    rewritten = [replace(s, completion="9, 9").as_row() for s in samples]
    assert rewritten[0]["messages"][0]["content"] == "You love owls."
    assert rewritten[0]["messages"][-1]["content"] == "9, 9"
    assert rewritten[1]["completion"] == [{"role": "assistant", "content": "9, 9"}]
    assert rows[1]["completion"][0]["content"] == "6, 7"  # the rows read are never changed in place
