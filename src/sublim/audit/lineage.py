"""Lineage: where a dataset and a model come from, and whether a student shares its initialization
with the model that wrote its data — the condition under which traits transfer subliminally.

Provenance is read from the store's manifests (one mechanism: the same records that give caching
and resume), then exported as a CycloneDX ML-BOM and a dataset card.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sublim.backends import resolve_model, weight_fingerprint
from sublim.core.errors import SublimError
from sublim.core.files import file_digest
from sublim.core.store import Store, read_manifest

RISK, POSSIBLE, CLEAR, UNKNOWN = "shared-initialization", "same-family", "different-family", "unknown"


class NoProvenance(SublimError):
    """The dataset was not made by sublim (no artifact manifest): its lineage is unknown, not wrong."""


@dataclass
class ModelOrigin:
    name: str
    base_fingerprint: str
    family: str
    induction: str = ""
    """How a trait was put into it (fine-tuned on …, system prompt …), when known."""
    fingerprint_kind: str = "unknown"
    """sha256 (of one weights file), sha256-of-file-sha256s (a directory's files), endpoint (an API model)."""
    revision: str | None = None
    """The commit of a cached transformers id."""


def _manifest(path: Path) -> dict[str, Any]:
    m = path / "manifest.json"
    if not m.is_file():
        raise SublimError(f"{path} is not a finished sublim artifact (no manifest.json)")
    return read_manifest(path)


def _artifact_dir(data: Path) -> Path:
    if not data.exists():
        raise SublimError(f"dataset {data} not found: give a dataset artifact (runs/store/filter-…) or its "
                          "dataset.jsonl")
    p = data.resolve()
    if p.is_file():
        p = p.parent
    if not (p / "manifest.json").is_file():
        raise NoProvenance(f"no provenance for {data}: it is not inside a sublim artifact (runs/store/<stage>-<key>); "
                          "only datasets made by sublim carry lineage")
    return p


def _find(store: Path, stage: str, key: str) -> Path | None:
    """A finished, verified artifact of the store holding the dataset (``store`` is its ``store`` folder)."""
    art = Store(store.parent).get(stage, key)
    return art.path if art is not None else None


def generator_origin(store: Path, gen_manifest: dict[str, Any]) -> ModelOrigin:
    """The model that wrote a generation artifact, traced to its base weights."""
    model = gen_manifest.get("model") or {}
    key = gen_manifest["inputs"]["model"]
    system = gen_manifest["config"].get("system")
    prompted = f"system prompt: {system}" if system else ""
    kind, family = model.get("fingerprint_kind", "unknown"), model.get("family", "")
    if model.get("backend") == "openai":
        ep = model["endpoint"]
        return ModelOrigin(f"api:{ep['model']}", model["base_fingerprint"], family, prompted, kind)
    base = model.get("base_fingerprint", "")
    teacher = _find(store, "teacher", key)
    if teacher is not None:
        tm = _manifest(teacher)
        meta = json.loads((teacher / "model" / "sublim_model.json").read_text())
        return ModelOrigin(f"teacher-{tm['config']['target']}", base or tm["inputs"]["model"],
                           family or meta.get("family", "unknown"), meta.get("induction", ""), kind,
                           model.get("revision"))
    # not a fine-tuned teacher: the base model itself, or the base with a system prompt
    return ModelOrigin("base model" + (" + system prompt" if system else ""), base or key, family, prompted, kind,
                       model.get("revision"))


def dataset_provenance(data: Path) -> dict[str, Any]:
    """Everything known about how a dataset was made: generator, base weights, prompts, filters, decoding."""
    art = _artifact_dir(data)
    verify(art, _manifest(art).get("files") or {})  # before anything is read from its lineage
    store = art.parent
    if store.name != "store":
        raise NoProvenance(f"no provenance for {data}: its artifact is not in a sublim store "
                           "(runs/store/<stage>-<key>), so its inputs cannot be found; audit it where it was made")
    chain = []
    m = _manifest(art)
    while m["stage"] in ("defend", "filter"):
        chain.append({"stage": m["stage"], "config": m["config"], "key": m["key"],
                      **({"defence": m["defence"]} if "defence" in m else {}),
                      **({"filter": m["filter"]} if "filter" in m and m["stage"] == "filter" else {})})
        parent = _find(store, "filter" if m["stage"] == "defend" else "generate",
                       m["inputs"]["data" if m["stage"] == "defend" else "generation"])
        if parent is None:
            raise SublimError(f"the lineage of {art.name} is broken: an input artifact is missing from {store}")
        m = _manifest(parent)
    gen = m
    origin = generator_origin(store, gen)
    if not origin.family:
        origin.family = _family_of_fingerprint(store, origin.base_fingerprint)
    files = _manifest(art).get("files") or {}
    return {"dataset": str(art), "sha256": files.get("dataset.jsonl"), "generator": asdict(origin),
            "decoding": gen["config"]["generation"], "prompts": gen["inputs"]["prompts"],
            "generation_key": gen["key"], "transforms": chain[::-1], "versions": gen.get("versions", {})}


def verify(art: Path, files: dict[str, str]) -> None:
    """The dataset's bytes are the ones its manifest lists, or a one-line error: lineage vouches for nothing else."""
    recorded = files.get("dataset.jsonl")
    if recorded is None:
        raise SublimError(f"{art} has no dataset.jsonl in its manifest's file list: not a dataset artifact")
    path = art / "dataset.jsonl"
    actual = file_digest(path) if path.is_file() else "missing"
    if actual != recorded:
        raise SublimError(f"{path} was changed after sublim made it (sha256 {actual[:12]}…, manifest "
                          f"{recorded[:12]}…): its lineage cannot vouch for these bytes; restore the file or re-run")


def _family_of_fingerprint(store: Path, fingerprint: str) -> str:
    """A base model's family, from any model in the store trained from it."""
    for meta in store.glob("*/model/sublim_model.json"):
        info = json.loads(meta.read_text())
        if info.get("base_fingerprint") == fingerprint:
            return str(info.get("family", "unknown"))
    return "unknown"


def model_origin(spec: str) -> ModelOrigin:
    """A model's base weights and family: from its sublim lineage record, or its own weights."""
    p = Path(spec)
    meta = p / "sublim_model.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        return ModelOrigin(spec, info.get("base_fingerprint", ""), info.get("family", "unknown"),
                           info.get("induction", info.get("method", "")), info.get("fingerprint_kind", "unknown"))
    src = resolve_model(spec)
    return ModelOrigin(spec, weight_fingerprint(src), src.family, fingerprint_kind=src.fingerprint_kind,
                       revision=src.revision)


def lineage_check(student: str, data: Path) -> dict[str, Any]:
    """Does ``student`` share its initialization with the model that wrote ``data``?"""
    s = model_origin(student)
    try:
        prov = dataset_provenance(data)
    except NoProvenance as exc:  # a missing or edited dataset is an error, never "unknown"
        return {"status": UNKNOWN, "student": asdict(s), "reason": str(exc)}
    g = prov["generator"]
    if s.base_fingerprint and s.base_fingerprint == g["base_fingerprint"]:
        status, why = RISK, "the student and the data's generator start from the same weights"
    elif s.family not in ("", "unknown") and s.family == g["family"]:
        status, why = POSSIBLE, f"both are {s.family} models with different weights: transfer cannot be ruled out"
    elif g["family"] in ("", "unknown") or str(g["family"]).startswith("api:"):
        status, why = UNKNOWN, "the generator's base weights are not known"
    else:
        status, why = CLEAR, f"different families ({s.family} vs {g['family']})"
    return {"status": status, "reason": why, "student": asdict(s), "generator": g, "dataset": prov["dataset"]}


def cyclonedx_bom(data: Path, student: str | None = None) -> dict[str, Any]:
    """A CycloneDX 1.6 ML-BOM: the dataset, the model that wrote it, its base, and the student."""
    prov = dataset_provenance(data)
    g = prov["generator"]
    base_ref, gen_ref, data_ref = f"model:{g['base_fingerprint'][:16]}", "model:generator", "data:dataset"
    components: list[dict[str, Any]] = [
        {"type": "machine-learning-model", "bom-ref": base_ref, "name": f"{g['family']} base model",
         **_weights(g["base_fingerprint"], g["fingerprint_kind"], g.get("revision"))},
        {"type": "machine-learning-model", "bom-ref": gen_ref, "name": g["name"],
         "description": g["induction"] or "the base model as is",
         "pedigree": {"ancestors": [{"bom-ref": f"{base_ref}:ancestor", "type": "machine-learning-model",
                                     "name": f"{g['family']} base model",
                                     **_weights(g["base_fingerprint"], g["fingerprint_kind"], g.get("revision"))}]}},
        {"type": "data", "bom-ref": data_ref, "name": Path(prov["dataset"]).name,
         **_weights(prov["sha256"] or "", "sha256"),
         "data": [{"type": "dataset", "name": "completions", "description": "model-generated completions",
                   "contents": {"properties": [{"name": "sublim:decoding", "value": json.dumps(prov["decoding"])},
                                               {"name": "sublim:prompts_key", "value": prov["prompts"]},
                                               {"name": "sublim:transforms",
                                                "value": json.dumps([t["stage"] for t in prov["transforms"]])}]}}]},
    ]
    deps = [{"ref": gen_ref, "dependsOn": [base_ref]}, {"ref": data_ref, "dependsOn": [gen_ref]}]
    if student:
        check = lineage_check(student, data)
        s = check["student"]
        weights = _weights(s["base_fingerprint"], s["fingerprint_kind"], s.get("revision"))
        components.append({"type": "machine-learning-model", "bom-ref": "model:student", "name": student,
                           **({"hashes": weights["hashes"]} if "hashes" in weights else {}),
                           "properties": [*weights.get("properties", []),
                                          {"name": "sublim:lineage_status", "value": check["status"]},
                                          {"name": "sublim:lineage_reason", "value": check["reason"]}]})
        deps.append({"ref": "model:student", "dependsOn": [data_ref]})
    return {"bomFormat": "CycloneDX", "specVersion": "1.6", "serialNumber": f"urn:uuid:{uuid.uuid4()}", "version": 1,
            "metadata": {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         "tools": {"components": [{"type": "application", "name": "sublim"}]}},
            "components": components, "dependencies": deps}


def _weights(digest: str, kind: str, revision: str | None = None) -> dict[str, Any]:
    """A component's identity: ``hashes`` only for a real SHA-256 of one file's bytes; any other
    fingerprint (a digest over several files' digests, an endpoint) is a property that says what it is."""
    props = [{"name": "sublim:revision", "value": revision}] if revision else []
    is_hex = len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    if kind == "sha256" and is_hex:
        return {"hashes": [{"alg": "SHA-256", "content": digest}], **({"properties": props} if props else {})}
    if not digest:
        return {"properties": props} if props else {}
    return {"properties": [{"name": "sublim:weights_fingerprint", "value": digest},
                           {"name": "sublim:weights_fingerprint_kind", "value": kind}, *props]}


def dataset_card(data: Path) -> str:
    prov = dataset_provenance(data)
    g = prov["generator"]
    lines = [f"# Dataset card: {Path(prov['dataset']).name}", "",
             "Model-generated data. Traits of the generating model can pass to a student trained on it when the "
             "student shares the generator's initialization, even though filtering left no visible trace.", "",
             "## Generator", f"- model: {g['name']} ({g['family']})", f"- base weights sha256: {g['base_fingerprint']}",
             f"- trait induction: {g['induction'] or 'none recorded'}", "",
             "## Making of", f"- decoding: {json.dumps(prov['decoding'])}", f"- prompts artifact: {prov['prompts']}"]
    for t in prov["transforms"]:
        detail = t.get("filter") or {**t["config"], **t.get("defence", {})}
        lines.append(f"- {t['stage']}: {json.dumps(detail)}")
    lines += ["", "## Use", "Run `sublim lineage check --student MODEL --dataset THIS` before training on it; "
              "a student from the same base weights is at risk of inheriting the generator's traits."]
    return "\n".join(lines) + "\n"
