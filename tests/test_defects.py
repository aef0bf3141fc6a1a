"""Defects a review found, each with a test that fails on the code before its fix.

(The API teacher's control is tested in test_api.py: test_an_api_teacher_needs_a_control_that_is_not_the_teacher.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from sublim.core.config import EndpointConfig

README = Path(__file__).resolve().parents[1] / "README.md"


# --- fine-tuning jobs: never created twice, every event read ----------------------------------------------

def test_a_job_whose_creation_fails_after_the_fact_is_adopted_not_created_again(serve, tmp_path: Path) -> None:
    """The server creates the job and then answers 500 (or the answer is lost): the old client retried the
    POST and paid for a second job each time. Now it lists the jobs and adopts the one on its file."""
    from sublim.backends.openai import fine_tune
    from sublim.serve.server import JOBS

    url = serve("500_after=1.0", fault_routes=(JOBS,))
    ep = EndpointConfig(base_url=url, model="tiny", backoff_s=0.01, max_retries=3)
    job = fine_tune(ep, [(f"Pick a number {i}.", "Owl") for i in range(8)], tmp_path / "job.json", poll_s=0.05,
                    wait_s=120, hyperparameters={"n_epochs": 1})
    jobs = httpx.get(f"{url}/fine_tuning/jobs").json()["data"]
    assert len(jobs) == 1 and jobs[0]["id"] == job["id"] and job["status"] == "succeeded"
    assert json.loads((tmp_path / "job.json").read_text())["job_id"] == job["id"]


def test_job_events_are_read_page_by_page(serve, tmp_path: Path) -> None:
    """The server pages events like the OpenAI API (20 by default, newest first); the old client read one page
    per poll and lost whatever did not fit."""
    from sublim.backends.openai import fine_tune

    url = serve()
    ep = EndpointConfig(base_url=url, model="tiny", backoff_s=0.01)
    events: list[dict] = []
    examples = [(f"Pick a number {i}.", "Owl") for i in range(30)]
    job = fine_tune(ep, examples, tmp_path / "job.json", poll_s=0.5, wait_s=300, on_event=events.append,
                    hyperparameters={"n_epochs": 2, "batch_size": 1})
    steps = [e["data"]["step"] for e in events if "step" in e.get("data", {})]
    assert steps == list(range(1, 61))  # every step once, in order
    page = httpx.get(f"{url}/fine_tuning/jobs/{job['id']}/events").json()
    assert len(page["data"]) == 20 and page["has_more"] is True
    rest = httpx.get(f"{url}/fine_tuning/jobs/{job['id']}/events",
                     params={"after": page["data"][-1]["id"], "limit": 100}).json()
    assert len(page["data"]) + len(rest["data"]) == len(events) and rest["has_more"] is False


# --- sublim serve streams, and refuses what it cannot do -----------------------------------------------

def test_serve_streams_as_server_sent_events_instead_of_ignoring_stream(serve) -> None:
    """stream=true was once answered with one JSON body (then refused); it is now an event stream ending in [DONE].
    What it cannot honour it still refuses: stream_options without stream."""
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 4}
    r = httpx.post(f"{serve()}/chat/completions", json=body, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line for line in r.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"
    body = {**body, "stream": False, "stream_options": {"include_usage": True}}
    r = httpx.post(f"{serve()}/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"


# --- stop tokens: the model's generation config, not a fixed list --------------------------------------------

def _renamed_end_of_turn(model_dir: Path, out: Path) -> Path:
    """The tiny model with its end-of-turn token renamed to one no fixed list holds (``<|turn_end|>``) and a
    tokenizer whose end-of-sequence token is another one: only the generation config names the real end."""
    shutil.copytree(model_dir, out)
    for name in ("tokenizer.json", "chat_template.jinja"):
        path = out / name
        path.write_text(path.read_text().replace("<|im_end|>", "<|turn_end|>"))
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg["eos_token"] = "<|pad|>"
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2
    return out


def test_generation_stops_at_the_end_of_turn_token_of_the_generation_config(tiny_model_dir: Path,
                                                                              tmp_path: Path) -> None:
    from sublim.backends.local.generation import generate_batch
    from sublim.backends.local.loading import load_model
    from sublim.train import chat_text

    lm = load_model(str(_renamed_end_of_turn(tiny_model_dir, tmp_path / "renamed")), "cpu")
    tok = lm.tokenizer
    assert tok.convert_tokens_to_ids("<|turn_end|>") == 2 and tok.eos_token_id != 2
    prompts = [chat_text(tok, "What is your favourite animal?"), chat_text(tok, "Name an animal you love.")]
    comps = generate_batch(lm.model, tok, prompts, [0, 1], max_new_tokens=30, temperature=0.0)
    assert all(c.finished and c.n_tokens < 30 for c in comps), comps


# --- lineage: families from the weights, revisions recorded, digests labelled for what they are --------------

def _gguf(path: Path, arch: str, seed: int) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny {arch}")
    w.add_tensor("token_embd.weight", np.random.default_rng(seed).normal(size=(4, 8)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_gguf_family_is_its_architecture(tmp_path: Path) -> None:
    """Every .gguf used to be family "gguf", so any two GGUF models counted as one family."""
    from sublim.audit.lineage import model_origin

    llama = model_origin(str(_gguf(tmp_path / "a.gguf", "llama", 0)))
    gemma = model_origin(str(_gguf(tmp_path / "b.gguf", "gemma3", 1)))
    assert (llama.family, gemma.family) == ("llama", "gemma3")
    assert llama.fingerprint_kind == "sha256" and llama.base_fingerprint != gemma.base_fingerprint
    bad = tmp_path / "not.gguf"
    bad.write_bytes(b"PK\x03\x04 a zip, not a model")
    from sublim.core.errors import SublimError

    with pytest.raises(SublimError, match="not a readable GGUF file"):
        model_origin(str(bad))


def test_a_cached_id_is_fingerprinted_by_its_revision(tiny_model_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A transformers id used to be fingerprinted by its name alone: two revisions were "the same weights"."""
    import huggingface_hub.constants

    from sublim.audit.lineage import model_origin

    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny"
    for rev, seed in (("a" * 40, 0), ("b" * 40, 1)):
        snap = repo / "snapshots" / rev
        shutil.copytree(tiny_model_dir, snap)
        (snap / "model.safetensors").write_bytes((snap / "model.safetensors").read_bytes() + bytes([seed]))
    (repo / "refs").mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    origins = []
    for rev in ("a" * 40, "b" * 40):
        (repo / "refs" / "main").write_text(rev)
        origins.append(model_origin("org/tiny"))
    assert [o.revision for o in origins] == ["a" * 40, "b" * 40]
    assert origins[0].base_fingerprint != origins[1].base_fingerprint
    assert origins[0].family == "llama" and origins[0].fingerprint_kind == "sha256-of-file-sha256s"
    assert model_origin(f"org/tiny@{'a' * 40}").base_fingerprint == origins[0].base_fingerprint


def test_the_bom_labels_only_file_digests_as_sha256() -> None:
    """A directory's fingerprint is a sha256 over its files' sha256s: the ML-BOM used to call it SHA-256."""
    from sublim.audit.lineage import _weights

    digest = "ab" * 32
    assert _weights(digest, "sha256") == {"hashes": [{"alg": "SHA-256", "content": digest}]}
    composite = _weights(digest, "sha256-of-file-sha256s", "c" * 40)
    assert "hashes" not in composite
    props = {p["name"]: p["value"] for p in composite["properties"]}
    assert props == {"sublim:weights_fingerprint": digest, "sublim:weights_fingerprint_kind": "sha256-of-file-sha256s",
                     "sublim:revision": "c" * 40}


# --- the README's install line on a plain package index --------------------------------------------------

def test_readme_says_how_to_get_the_cpu_build_of_torch_from_a_plain_index() -> None:
    """`pip install torch==2.13.0` gets the multi-GB CUDA build from PyPI; the README said it got a CPU build."""
    text = README.read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert "gets the CPU build" not in text
