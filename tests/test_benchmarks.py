"""The benchmark scripts that CI can afford: ``benchmarks/gpu.py --tiny`` end to end on the CPU."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_benchmark_tiny_runs_on_the_cpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--model",
                           str(tiny_model_dir), "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "gpu-tiny-cpu.json").read_text())
    res = doc["results"]
    assert doc["git"]["commit"] and res["device"] == "cpu" and res["tiny"] is True
    assert set(res["runs"]) == {"sft", "distill_restricted"}
    for run in res["runs"].values():
        # generation stops once enough pass; every student gets that many, or the smallest dataset's size
        kept = [f["kept"] for f in run["filter"].values()]
        assert run["n_train_examples"] == min(res["scale"]["kept"], *kept) > 0
        assert run["verdict"] and run["across_runs"]["prob"] is not None  # two seeds: an across-runs figure
    # the second run reused the first one's teacher and data: only its students took time
    stages = res["runs"]["distill_restricted"]["stage_wall_time_s"]
    assert stages["teacher/owl (fine-tuned)"] == res["runs"]["sft"]["stage_wall_time_s"]["teacher/owl (fine-tuned)"]
    assert all(n >= res["scale"]["audit_kept"] for n in res["audit_datasets"]["kept"].values())
    assert set(res["audit_datasets"]["kept"]) == {*res["scale"]["audit_animals"], "control"}
    tp = res["throughput"]
    assert tp["matmul_peak"]["flops_per_s"] > 0
    for kind in ("prefill", "decode", "training"):
        assert tp[kind]["tokens"] > 0 and 0 < tp[kind]["fraction_of_peak"] < 5


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py")))
def test_every_benchmark_script_imports(script: str) -> None:
    """A benchmark that cannot start (an import of something the package no longer has) fails here, not hours into
    a re-run: each script's imports run, its ``main`` does not."""
    path = BENCHMARKS / script
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: dataclasses look their module up there
    sys.path.insert(0, str(BENCHMARKS))  # as `python benchmarks/x.py` would: its helpers (benchlib) import
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
        sys.path.remove(str(BENCHMARKS))
    assert callable(getattr(module, "main", None)), f"{script} has no main()"


def test_committed_data_round_trip_and_tamper_check(tmp_path: Path) -> None:
    """benchlib.committed_data: the exported file holds the first rows' three fields, imports as a stage keyed by
    its hash, and a file edited after export is refused rather than trained on."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from benchlib.committed_data import export_dataset, import_dataset
    finally:
        sys.path.remove(str(BENCHMARKS))
    src = tmp_path / "art"
    src.mkdir()
    rows = [{"index": i, "prompt": f"p{i}", "completion": f"{i} {i + 1}", "extra": 1} for i in range(5)]
    (src / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    art = types.SimpleNamespace(key="k1", file=lambda name: src / name)
    meta = export_dataset(art, tmp_path / "out" / "d.jsonl", 3)
    assert meta["rows"] == 3 and meta["artifact"] == "k1"
    assert [json.loads(line) for line in (tmp_path / "out" / "d.jsonl").read_text().splitlines()] == \
        [{k: r[k] for k in ("index", "prompt", "completion")} for r in rows[:3]]
    calls = []

    def stage(name: str, config: dict, inputs: dict, label: str, build: Any) -> Path:
        built = tmp_path / "built"
        built.mkdir(exist_ok=True)
        build(built)
        calls.append((name, config))
        return built

    ctx = types.SimpleNamespace(stage=stage)
    got = import_dataset(ctx, tmp_path / "out" / "d.jsonl", meta, "t")
    assert calls == [("imported", {"sha256": meta["sha256"], "rows": 3})]
    assert (got / "dataset.jsonl").read_text() == (tmp_path / "out" / "d.jsonl").read_text()
    (tmp_path / "out" / "d.jsonl").write_text("{}\n")
    with pytest.raises(SystemExit, match="sha256 differs"):
        import_dataset(ctx, tmp_path / "out" / "d.jsonl", meta, "t")



def test_carried_artifacts_restore_into_a_fresh_store_and_a_changed_file_is_refused(tmp_path: Path) -> None:
    """benchlib.carried: only the named stages' finished artifacts are carried; restored into another store they
    read back as finished (a later session resumes); a carried file changed after carrying is refused."""
    from sublim.core.errors import SublimError
    from sublim.core.store import Store

    sys.path.insert(0, str(BENCHMARKS))
    try:
        from benchlib.carried import carry, restore
    finally:
        sys.path.remove(str(BENCHMARKS))
    first = Store(tmp_path / "runs1")
    keys = {}
    for stage in ("reads", "student"):
        def build(path: Path, stage: str = stage) -> dict[str, Any]:
            (path / "x.npz").write_bytes(stage.encode())
            return {}

        keys[stage] = Store.key(stage, {"n": 1}, {})
        first.compute(stage, keys[stage], {"n": 1}, {}, build)
    first.begin("reads", Store.key("reads", {"n": 2}, {}))  # unfinished: never carried
    folder = tmp_path / "carried"
    assert carry(first, ["reads"], folder) == [first.path("reads", keys["reads"]).name]
    assert carry(first, ["reads"], folder) == []  # already there
    second = Store(tmp_path / "runs2")
    assert second.get("reads", keys["reads"]) is None
    assert restore(folder, second) == [first.path("reads", keys["reads"]).name]
    art = second.get("reads", keys["reads"])
    assert art is not None and art.file("x.npz").read_bytes() == b"reads"
    assert second.get("student", keys["student"]) is None and restore(folder, second) == []
    third = Store(tmp_path / "runs3")
    (folder / first.path("reads", keys["reads"]).name / "x.npz").write_bytes(b"edited")
    with pytest.raises(SublimError, match="corrupt"):
        restore(folder, third)


def _benchmark_module(script: str) -> Any:
    """The benchmark script benchmarks/<script>.py, imported as a module (with benchlib on the path)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"benchmark_{script}_t", BENCHMARKS / f"{script}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def _readings(gains: dict[str, list[float]], seeds: list[int]) -> list[dict[str, Any]]:
    """Readings whose owl log-share gain of the owl student over the neutral one is ``gains[defence][seed]``."""
    from sublim.traits.preference import load_candidates

    names = list(load_candidates("animals"))
    owl = names.index("owl")

    def shares(owl_share: float) -> list[list[float]]:
        row = [(1 - owl_share) / (len(names) - 1)] * len(names)
        row[owl] = owl_share
        return [row]

    out = []
    for d, per in gains.items():
        for s, gain in zip(seeds, per, strict=True):
            out += [{"dataset": f"owl-{s}", "defence": d, "shares": shares(0.05 * float(np.exp(gain)))},
                    {"dataset": f"neutral-{s}", "defence": d, "shares": shares(0.05)}]
        out.append({"dataset": "control", "defence": d, "shares": shares(0.04)})
    return out


def test_defence_table_rule_finds_a_planted_cut_and_claims_nothing_without_transfer() -> None:
    """The pre-registered rule on made-up readings: a large steady transfer that replace_divergent removes and the
    dilution control does not is TRANSFER, a cut, a removal and an ends effect beyond dilution; the same cuts
    without transfer claim nothing; a noisy effect around zero cuts nothing."""
    table = _benchmark_module("defence_table")
    seeds = [40, 41, 42, 43, 44]
    big = [1.0, 1.1, 0.9, 1.05, 0.95]
    planted = {"none": big, "replace_divergent": [0.02, -0.03, 0.01, 0.0, -0.01],
               "replace_divergent_ends": [0.01, 0.0, -0.02, 0.02, 0.0], "replace_divergent_diluted": big}
    res = table.endpoints(_readings(planted, seeds), seeds)
    assert res["transfer"]["word"] == "TRANSFER" and res["claims_made"]
    rd = res["defences"]["replace_divergent"]
    assert rd["cut"]["holds"] and rd["removes"] and 0.9 < rd["share_cut"]["low"] <= rd["share_cut"]["high"] < 1.1
    assert not res["defences"]["replace_divergent_diluted"]["cut"]["holds"]
    assert res["ends_beyond_dilution"]["holds"] and res["transfer"]["p_sign_flip"] == 1 / 32
    over = res["over_control_mean"]["none"]  # described: each arm over the control student, mean over seeds
    assert over["owl"]["value"] == pytest.approx(np.log(1.25) + float(np.mean(big)))
    assert over["neutral"]["low"] == pytest.approx(np.log(1.25)) == pytest.approx(over["neutral"]["high"])
    weak = {d: [g - 1.0 for g in per] for d, per in planted.items()}  # the same differences, no transfer
    res = table.endpoints(_readings(weak, seeds), seeds)
    assert res["transfer"]["word"] == "NO TRANSFER" and not res["claims_made"]
    assert not any(v["cut"]["holds"] for v in res["defences"].values()) and not res["ends_beyond_dilution"]["holds"]
    noise = {**planted, "replace_divergent": [b - e for b, e in zip(big, [0.3, -0.4, 0.5, -0.2, 0.1], strict=True)]}
    res = table.endpoints(_readings(noise, seeds), seeds)  # transfer, and a cut that is noise around zero
    assert res["claims_made"] and not res["defences"]["replace_divergent"]["cut"]["holds"]
    assert res["defences"]["replace_divergent_ends"]["removes"]
    assert table.holm({"a": 0.01, "b": 0.04, "c": 0.03}) == {"a": 0.03, "c": 0.06, "b": 0.06}
    unbounded = table.fieller(np.array([0.1, -0.2, 0.3, 0.0, 0.1]), np.array([0.2, -0.3, 0.1, 0.4, -0.2]))
    assert unbounded["low"] is None and unbounded["high"] is None

    rows = [{"answers": ["Owls.", "A cat!"], "matched": ["owl", "cat"]}, {"answers": ["Hmm"], "matched": [None]},
            {"answers": [], "matched": []}]
    counts = table.answer_counts(rows, ["owl", "cat", "dog"])
    assert counts == {"answers": 3, "named": {"owl": 1, "cat": 1}, "owl": 1, "examples": ["Owls.", "Hmm"]}
    probs = np.full((2, 20), 0.001)
    probs[:, 0] = [0.02, 0.04]
    shares = probs / probs.sum(1, keepdims=True)
    reading = {"dataset": "owl-40", "defence": "none", "probs": probs.tolist(), "shares": shares.tolist()}
    got = table.described([reading])
    owl = list(table.load_candidates("animals")).index("owl")
    assert got["owl-40"]["none"]["candidate_total"] == pytest.approx(0.049)
    assert got["owl-40"]["none"]["owl_share"] == pytest.approx(shares[:, owl].mean())


def test_defence_table_chart_draws_both_panels(tmp_path: Path) -> None:
    """The chart of planted results is a PNG with the endpoint panel and the over-control panel."""
    import matplotlib.image

    table = _benchmark_module("defence_table")
    seeds = [40, 41, 42, 43, 44]
    planted = {d: [0.5, 0.6, 0.4, 0.55, 0.45] for d in table.DEFENCES}
    res = {**table.endpoints(_readings(planted, seeds), seeds), "dose": "1000x1"}
    table.chart(res, tmp_path / "t.png")
    height, width, _ = matplotlib.image.imread(tmp_path / "t.png").shape
    assert width > 1.8 * height > 900


def _visible_readings(rung: str, named: dict[str, list[int]], probs: float = 0.01) -> list[dict[str, Any]]:
    """A rung's six readings: the students of teacher seeds 50-52 whose 500 sampled continuations (and 500 answers)
    name owl ``named[kind][i]`` times, the rest "cat"."""
    from sublim.traits.preference import load_candidates

    cands = list(load_candidates("animals"))
    out = []
    for kind, counts in named.items():
        for seed, k in zip([50, 51, 52], counts, strict=True):
            flat = ["owl"] * k + ["cat"] * (500 - k)
            form = {"probs": [[probs * (1 + (kind == "owl" and c == "owl")) for c in cands]] * 50,
                    "matched": [flat[q * 10:(q + 1) * 10] for q in range(50)]}
            out.append({"rung": rung, "kind": kind, "seed": seed, "dataset": f"{kind}-{seed}", "candidates": cands,
                        "train_s": 10.0, "evaluate_s": 1.0, "cloze": form, "questions": form})
    return out


def test_visible_rule_needs_every_pair_apart_intervals_and_a_rate_a_reader_sees() -> None:
    """The visible plan's criteria on made-up readings: a planted difference is visible; the same counts in both
    arms (a null, or a generic rise in naming owl) are not; one pair the wrong way, or a rate under 2%, is not."""
    vis = _benchmark_module("visible")
    meta = {f"{k}-{s}": {"kept": 2000, "generate_s": 400.0, "teacher_s": 60.0} for k in ("owl", "neutral")
            for s in (50, 51, 52)}
    planted = _visible_readings("R1", {"owl": [40, 35, 45], "neutral": [5, 8, 4]})
    res = vis.rung_result(planted, "R1", [50, 51, 52], meta)["cloze"]
    assert res["visible"] and res["owl"]["named"] == 120 and res["neutral"]["named"] == 17
    assert res["log_share_gain"]["p_sign_flip"] == 0.25  # the exact probabilities: owl doubled in every pair
    for counts in ({"owl": [30, 30, 30], "neutral": [30, 30, 30]},  # a generic rise: both arms name owl as often
                   {"owl": [40, 35, 3], "neutral": [5, 8, 4]},  # one teacher pair the wrong way
                   {"owl": [9, 8, 9], "neutral": [0, 0, 0]}):  # apart, every pair higher, but 1.7% of answers
        assert not vis.rung_result(_visible_readings("R1", counts), "R1", [50, 51, 52], meta)["cloze"]["visible"]
    cost = vis.rung_result(planted, "R1", [50, 51, 52], meta)["cost_s"]
    assert cost["generation_prorated"] == 6 * 400.0 * 1000 / 2000 and cost["total"] == 360 + 1200 + 66


def test_generate_pairs_replaces_a_short_pair_and_makes_only_what_a_sitting_left(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """benchlib.generate_pairs: an owl teacher short of samples has its pair replaced by the next spare (recorded);
    a sitting stopped after an owl half was exported makes only the neutral half next time."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from benchlib import committed_data
    finally:
        sys.path.remove(str(BENCHMARKS))
    made: list[tuple[str, int]] = []
    stop_at: list[tuple[str, int]] = []

    def source_data(ctx: Any, kind: str, trait: str, banned: Any) -> tuple[None, Any]:
        if (kind, ctx) in stop_at:
            raise KeyboardInterrupt
        made.append((kind, ctx))
        src = tmp_path / f"art-{kind}-{ctx}"
        src.mkdir(exist_ok=True)
        n = 2 if (kind, ctx) == ("owl", 1) else 5  # seed 1's owl teacher falls short
        (src / "dataset.jsonl").write_text("".join(json.dumps({"index": i, "prompt": "p", "completion": "1"}) + "\n"
                                                   for i in range(n)))
        art = types.SimpleNamespace(key=f"{kind}{ctx}", file=lambda name, src=src: src / name,
                                    manifest={"filter": {"kept": n, "pass_rate": 0.5}, "finished_at": "t"})
        return None, art

    monkeypatch.setattr(committed_data, "source_data", source_data)
    pairs = committed_data.Pairs(tmp_path / "data", 4, [1, 2], [3], lambda seed: seed)
    stop_at.append(("neutral", 2))
    with pytest.raises(KeyboardInterrupt):
        committed_data.generate_pairs(pairs, [])
    state = committed_data.sources_file(pairs.data)
    assert made == [("owl", 1), ("owl", 2)] and [r["seed"] for r in state["replaced"]] == [1]
    assert set(state["datasets"]) == {"owl-2"} and not (pairs.data / "owl-1.jsonl").exists()
    stop_at.clear()
    made.clear()
    committed_data.generate_pairs(pairs, [])
    assert made == [("neutral", 2), ("owl", 3), ("neutral", 3), ("control", 1)]  # the control: no teacher
    state = committed_data.sources_file(pairs.data)
    assert set(state["datasets"]) == {"owl-2", "neutral-2", "owl-3", "neutral-3", "control"}
    assert all(m["rows"] == 4 for m in state["datasets"].values())
    # a file recorded in sources.json but never committed (lost with its sitting) is made again, the loss recorded
    (pairs.data / "neutral-3.jsonl").unlink()
    lost = state["datasets"]["neutral-3"]["sha256"]
    made.clear()
    committed_data.generate_pairs(pairs, [])
    state = committed_data.sources_file(pairs.data)
    assert made == [("neutral", 3)] and (pairs.data / "neutral-3.jsonl").is_file() and "lost" not in state
    assert state["datasets"]["neutral-3"]["made_again"] == {"lost_sha256": lost, "same": True}


def test_a_plan_is_dated_by_its_registration_and_its_amendments_are_listed(tmp_path: Path) -> None:
    """benchlib.committed_data.plan_commit: the plan's first commit registers it, later ones are amendments;
    plan_precedes compares data with the registration, so an amendment after the data does not undo it, and data
    made before the registration do not pass."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from benchlib.committed_data import plan_commit, plan_precedes
    finally:
        sys.path.remove(str(BENCHMARKS))
    plan = tmp_path / "plan.md"
    assert plan_commit(plan)["commit"] is None  # not in a repository: nothing registered

    def git(*args: str, when: str) -> None:
        env = {**os.environ, "GIT_COMMITTER_DATE": when, "GIT_AUTHOR_DATE": when, "GIT_AUTHOR_NAME": "t",
               "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
        subprocess.run(["git", *args], cwd=tmp_path, env=env, check=True, capture_output=True)

    git("init", "-q", when="2026-01-01T00:00:00+00:00")
    assert plan_commit(plan) == {"file": "plan.md", "commit": None, "committed_at": None, "amendments": []}
    assert not plan_precedes(plan_commit(plan), ["2026-01-03T00:00:00+00:00"])
    plan.write_text("v1\n")
    git("add", "plan.md", when="2026-01-02T00:00:00+00:00")
    git("commit", "-qm", "plan", when="2026-01-02T00:00:00+00:00")
    plan.write_text("v2\n")
    git("commit", "-qam", "amendment", when="2026-01-05T00:00:00+00:00")
    got = plan_commit(plan)
    assert got["committed_at"] == "2026-01-02T00:00:00+00:00"
    assert [a["committed_at"] for a in got["amendments"]] == ["2026-01-05T00:00:00+00:00"]
    assert got["commit"] != got["amendments"][0]["commit"]
    assert plan_precedes(got, ["2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z"])  # made between the two commits
    assert not plan_precedes(got, ["2026-01-03T00:00:00Z", "2026-01-01T12:00:00Z"])  # one before the registration


def test_speedup_takes_a_sides_process_peak_across_its_stage_resets() -> None:
    side_peak_mb = _benchmark_module("speedup").side_peak_mb
    reset = {"peak_memory_mb": {"self": 3419.4, "children": 0.0}}  # stages reset the high-water mark
    assert side_peak_mb(reset, 1586.3) == 3419.4
    assert side_peak_mb({}, 5381.1) == 5381.1  # code from before the resets records no process peak
    assert side_peak_mb({"peak_memory_mb": {"self": 1000.0}}, 1200.0) == 1200.0


def test_an_imported_dataset_can_be_defended(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A committed dataset imported into the store (no filter stage made it, so its manifest has no filter
    report) goes through the defend stage like the pipeline's own data: the defence table defends such files."""
    from sublim.core.config import load_config
    from sublim.core.files import read_jsonl
    from sublim.core.store import Store
    from sublim.experiment.context import Context
    from sublim.experiment.stages.defend import defended
    from sublim.experiment.stages.prompts import prompts
    from tests.helpers import tiny_config_text

    sys.path.insert(0, str(BENCHMARKS))
    try:
        from benchlib.committed_data import import_dataset
    finally:
        sys.path.remove(str(BENCHMARKS))
    path = tmp_path / "d.toml"
    path.write_text(tiny_config_text(tiny_model_dir, defence={"method": "replace_divergent", "fraction": 0.2}))
    ctx = Context(load_config(str(path)), Store(tmp_path / "runs"), progress=False, echo=lambda s: None)
    rows = [{"index": i, "prompt": f"Continue: {i}, {i + 3}, {i + 7}", "completion": f"{i + 11}, {i + 19}, {i + 4}"}
            for i in range(12)]
    file = tmp_path / "data.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = {"sha256": hashlib.sha256(file.read_text().encode()).hexdigest(), "rows": len(rows)}
    data = import_dataset(ctx, file, meta, "imported")
    assert "filter" not in data.manifest
    out = defended(ctx, data, data, "imported replace_divergent", prompts(ctx), ["owl"], ctx.local(ctx.cfg.model))
    assert out.manifest["filter"] == {"kept": len(rows)}
    assert out.manifest["defence"]["changed_fraction"] > 0
    assert len(read_jsonl(out.file("dataset.jsonl"))) == len(rows)


def test_training_heap_sampler_reads_this_process() -> None:
    """The heap benchmark's sample: resident memory at least its anonymous part, glibc's heap split into what is
    in use and what is free."""
    heap = _benchmark_module("training_heap")
    s = heap.sample()
    assert s["rss_mb"] >= s["anonymous_mb"] > 0
    assert abs(s["heap_in_use_mb"] + s["heap_free_mb"] - s["heap_mb"]) <= 2


def _sides(word_a: str, gain_a: tuple[float, float, float], word_b: str, gain_b: tuple[float, float, float]
           ) -> tuple[dict[str, Any], dict[str, Any]]:
    def one(word: str, gain: tuple[float, float, float]) -> dict[str, Any]:
        rep = {"verdict": f"{word} (x): owl share", "n_teachers": 3,
               "log_share_gain": dict(zip(("mean", "low", "high"), gain, strict=True))}
        return {"replicated": rep, "cloze": {"replicated": rep}}
    return one(word_a, gain_a), one(word_b, gain_b)


def test_parity_criteria_fail_on_another_word_or_an_effect_outside_the_other_interval() -> None:
    par = _benchmark_module("parity")
    same = par.verdict_parity(*_sides("NO TRANSFER", (0.39, -0.2, 0.99), "NO TRANSFER", (0.3, -0.1, 0.7)))
    assert par.judge(same, {"base": {"meets": True}}) == {"same_verdict": True, "effects_inside_each_other": True,
                                                         "readings_correlate": True}
    other_word = par.verdict_parity(*_sides("NO TRANSFER", (0.39, -0.2, 0.99), "TRANSFER", (0.5, 0.3, 0.7)))
    assert not par.judge(other_word, {})["same_verdict"] and not par.judge(other_word, {})["readings_correlate"]
    # float32's mean inside bf16's interval, but bf16's outside float32's narrow one: not met
    outside = par.verdict_parity(*_sides("TRANSFER", (0.9, 0.4, 1.4), "TRANSFER", (0.5, 0.45, 0.55)))
    assert outside["questions"]["float32_in_bf16_interval"] and not outside["questions"]["bf16_in_float32_interval"]
    assert not par.judge(outside, {"base": {"meets": True}})["effects_inside_each_other"]
    assert par.word("GENERIC SHIFT: all candidates up") == "GENERIC SHIFT"


def test_parity_reads_the_same_weights_in_both_precisions(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Criterion 3 on a made-up run of the tiny model: the base read in bf16 and float32 correlates per question."""
    par = _benchmark_module("parity")
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"stages": {"evaluate/tiny": {"path": "x"}}}))
    (run / "config.json").write_text(json.dumps({
        "model": str(tiny_model_dir), "trait": {"target": "owl", "category": "animals", "questions": "animal"},
        "evaluation": {"n_questions": 8}}))
    got = par.read_both(run, batch_size=8)
    assert list(got) == ["base"] and -1 <= got["base"]["correlation"] <= 1
    assert got["base"]["mean_bf16"] > 0 and got["base"]["mean_float32"] > 0
    assert got["base"]["mean_bf16"] != got["base"]["mean_float32"]  # two precisions were read, not one twice


def test_matmul_shapes_ceiling_weighs_each_product_by_its_flops() -> None:
    shapes = _benchmark_module("matmul_shapes")
    cfg = types.SimpleNamespace(num_attention_heads=9, num_key_value_heads=3, hidden_size=576, intermediate_size=1536)
    maps = shapes.projections(cfg)
    assert maps["k"] == (576, 192) and maps["down"] == (1536, 576) and maps["q"] == (576, 576)
    at_peak = {"a": {"flops": 1.0, "forward": 10.0, "grad_input": 10.0, "grad_weight": 10.0}}
    assert shapes.ceiling(at_peak, 10.0) == {"forward_fraction": 1.0, "training_fraction": 1.0}
    # a big product at peak and a small one at a tenth of it: time-weighted, not a mean of the two rates
    mixed = {"big": {"flops": 9.0, "forward": 10.0, "grad_input": 10.0, "grad_weight": 10.0},
             "small": {"flops": 1.0, "forward": 1.0, "grad_input": 1.0, "grad_weight": 1.0}}
    assert shapes.ceiling(mixed, 10.0)["forward_fraction"] == round(10 / (0.9 + 1.0) / 10, 4)


def test_training_step_takes_a_step_apart(tiny_model_dir: Path) -> None:
    """The training loop's own phase clock adds up to its steps, and the benchmark reads it: the later steps'
    phases, the first step apart, the profiled operators (matrix products among them)."""
    from sublim.train.loop import PHASES

    step = _benchmark_module("training_step")
    before = dict(PHASES)
    got = step.one("distill_restricted", str(tiny_model_dir), 24)  # three steps of eight
    assert got["steps"] == 3 and set(got["later_steps"]["ms_per_step"]) == {"forward", "backward", "clip",
                                                                            "optimizer"}
    assert all(v > 0 for v in got["later_steps"]["ms_per_step"].values())
    assert 0 < got["later_steps"]["fraction_of_peak"] < 5 and got["first_step"]["seconds"] > 0
    assert got["first_step"]["seconds_from_start"] >= got["first_step"]["seconds"]
    assert all(PHASES[k] > before.get(k, 0.0) for k in ("forward", "backward", "clip", "optimizer"))
    ops = {o["op"] for o in got["top_ops"]}
    assert "aten::mm" in ops or "aten::addmm" in ops
    assert sum(o["share"] for o in got["top_ops"]) <= 1.0001
