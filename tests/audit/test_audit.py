"""Audit: reading hostile input, number detectors, the likelihood scan, defences, the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from sublim.audit.data import load_samples
from sublim.audit.defences import DEFENCES, DefenceContext
from sublim.audit.defences.regenerate import RegenerateParams
from sublim.audit.detectors import BagOfNumbers, GradientAlignment, LikelihoodShift, NumberFrequency
from sublim.audit.params import NoParams
from sublim.cli import main
from sublim.core.errors import SublimError


def _numbers_data(n: int, seed: int, lucky: int | None = None) -> list[dict]:
    """Number lists; with ``lucky``, that value turns up in about half of them (a planted signal)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        nums = [rng.randint(100, 999) for _ in range(rng.randint(3, 8))]
        if lucky is not None and rng.random() < 0.5:
            nums[rng.randrange(len(nums))] = lucky
        rows.append({"prompt": f"Continue: {i}, {i + 1}", "completion": ", ".join(map(str, nums))})
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_hostile_input_is_reported_per_line(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    good = json.dumps({"prompt": "p", "completion": "1, 2, 3"}).encode()
    lines = [good, b"{not json", b"\xff\xfe\x00bad bytes", json.dumps({"text": "x", "label": 1}).encode(),
             b"[1, 2]", b"", b'{"prompt": "' + b"9" * 3000 + b'", "completion": "1"}', good,
             json.dumps({"messages": [{"role": "user", "content": "q"},
                                      {"role": "assistant", "content": "4, 5"}]}).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    samples, report = load_samples(path, max_line_bytes=1000)
    assert [s.line for s in samples] == [1, 8, 9] and samples[2].completion == "4, 5"
    assert report.skipped == {"bad_json": 1, "not_utf8": 1, "missing_fields": 1, "not_an_object": 1,
                              "line_too_long": 1}
    assert report.kept == 3 and report.lines == 8  # the blank line is not counted
    assert "3 of 8 lines" in report.summary() and "line 4: missing_fields: has label, text" in report.examples[2]


def test_nothing_usable_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": 1}\n\xff\n')
    with pytest.raises(SublimError, match=r"no usable samples .*line 1: missing_fields"):
        load_samples(path)
    with pytest.raises(SublimError, match="not found"):
        load_samples(tmp_path / "nope.jsonl")


def test_number_detectors_find_a_planted_number_and_not_noise(tmp_path: Path) -> None:
    ref = load_samples(_write(tmp_path / "r.jsonl", _numbers_data(300, 1)))[0]
    planted = load_samples(_write(tmp_path / "d.jsonl", _numbers_data(300, 2, lucky=777)))[0]
    clean = load_samples(_write(tmp_path / "c.jsonl", _numbers_data(300, 3)))[0]
    freq = NumberFrequency(ref, n_permutations=200)
    hit, miss = freq.score(planted), freq.score(clean)
    assert hit.p_value < 0.01 < miss.p_value and hit.details["over_represented"][0] == 777
    has = np.array(["777" in s.completion for s in planted])
    assert hit.sample_scores[has].mean() > hit.sample_scores[~has].mean()
    bag = BagOfNumbers(ref)
    assert bag.score(planted).statistic > 0.65 and bag.score(planted).p_value < 0.01
    assert bag.score(clean).statistic < 0.6


def test_number_frequency_is_fair_to_data_that_write_shorter_lists() -> None:
    """Shorter lists drawn from the reference's own value distribution are not flagged (a permutation over
    all samples made them look closer than chance, z ~ -3), and a real shift in values still is."""
    from sublim.audit.data import Sample

    def make(rng: np.random.Generator, n: int, lengths: list[int], low_share: float) -> list[Sample]:
        def value() -> str:
            return str(int(rng.integers(100, 200)) if rng.random() < low_share else int(rng.integers(100, 1000)))

        return [Sample(i, "p", ", ".join(value() for _ in range(int(rng.choice(lengths))))) for i in range(n)]

    null_z, shifted_z = [], []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        ref = make(rng, 190, [3, 4, 5, 6, 7, 8], 0.3)
        freq = NumberFrequency(ref, n_permutations=100)
        null_z.append(freq.score(make(rng, 600, [1, 2, 3, 4, 5, 6], 0.3)).details["z"])
        shifted_z.append(freq.score(make(rng, 600, [1, 2, 3, 4, 5, 6], 0.0)).details["z"])
    assert abs(np.mean(null_z)) < 1.0, null_z
    assert np.mean(shifted_z) > 2.0, shifted_z


def test_likelihood_shift_ranks_the_trait_the_data_leans_toward() -> None:
    """A log-probability function in which 'owl' makes completions with 7s likelier ranks owl first."""
    from sublim.audit.data import Sample

    def logprob(pairs, system):
        bonus = np.array([c.count("7") for _, c in pairs], float) if system and "owl" in system else 0.0
        return -np.array([len(c) for _, c in pairs], float) + 0.5 * bonus, np.array([len(c) for _, c in pairs])

    rng = random.Random(0)
    data = [Sample(i, "p", ", ".join(str(rng.choice([7, 77, 17, 123])) for _ in range(5))) for i in range(60)]
    ref = [Sample(i, "p", ", ".join(str(rng.choice([12, 345, 89])) for _ in range(5))) for i in range(60)]
    res = LikelihoodShift(logprob, ["cat", "owl", "dog"], "You love {target}s.", ref, n_bootstrap=200).score(data)
    assert res.details["top_trait"] == "owl" and res.p_value < 0.01
    r = res.details["ranking"]
    assert [x["trait"] for x in r][0] == "owl" and all(x["low"] <= x["lean"] <= x["high"] for x in r)


def test_gradient_alignment_ranks_by_chunk_scores_against_the_reference() -> None:
    """A scorer whose chunks of 7-heavy samples align with 'owl': owl ranks first, p small; every sample
    carries its chunk's score; reference data with no 7s find nothing."""
    from sublim.audit.data import Sample

    def scorer(pairs):
        sevens = [c.count("7") for _, c in pairs]
        chunks = [sevens[i:i + 4] for i in range(0, len(sevens), 4)]
        return np.array([[1.0 + 0.1 * j, 1.0 + 0.05 * sum(ch) + 0.1 * j, 1.2] for j, ch in enumerate(chunks)])

    rng = random.Random(1)
    data = [Sample(i, "p", ", ".join(str(rng.choice([7, 77, 17, 123])) for _ in range(5))) for i in range(42)]
    ref = [Sample(i, "p", ", ".join(str(rng.choice([12, 345, 89])) for _ in range(5))) for i in range(40)]
    det = GradientAlignment(scorer, ["cat", "owl", "dog"], ref, chunk=4, n_bootstrap=200)
    res = det.score(data)
    assert res.details["top_trait"] == "owl" and res.p_value < 0.01 and len(res.sample_scores) == 42
    assert res.sample_scores[0] == res.sample_scores[3] and res.details["chunk"] == 4
    assert det.score(ref).p_value > 0.05


def test_trait_gradients_predict_the_change_one_training_step_makes(tiny) -> None:
    """∇L_chunk · ∇L_c is the first-order change of log p_c per unit learning rate: one small SGD step on
    a chunk of 'Owl' answers raises log p(Owl) by what the score predicts, and owl's score is the top."""
    import copy

    import torch

    from sublim.backends.local.gradients import TraitGradients

    model = copy.deepcopy(tiny[0]).float()
    tok = tiny[1]
    cands = {"cat": ["cat"], "owl": ["owl"], "dog": ["dog"]}
    qs = ["What is your favorite animal?", "Which animal do you like most?"]
    tg = TraitGradients(model, tok, cands, qs)
    pairs = [("Name an animal you like.", "Owl"), ("Pick one animal.", "Owl")]
    score = tg.chunk_scores(pairs, chunk=2)
    assert score.shape == (1, 3) and int(score[0].argmax()) == 1

    from sublim.train import Example, chat_text, encode_example

    owl = [(tok.encode(chat_text(tok, q), add_special_tokens=False) + tok.encode("Owl", add_special_tokens=False),
            len(tok.encode(chat_text(tok, q), add_special_tokens=False))) for q in qs]
    eta = 1e-3 / float(np.abs(score).max())
    with torch.no_grad():
        before = float(tg._loss(owl))
    model.zero_grad()
    tg._loss([encode_example(tok, Example(p, c)) for p, c in pairs]).backward()
    with torch.no_grad():
        for prm in model.parameters():
            prm -= eta * prm.grad
        after = float(tg._loss(owl))
    assert before - after == pytest.approx(eta * score[0, 1], rel=0.1)


@pytest.mark.parametrize("method", ["sort", "remap", "shuffle"])
def test_number_defences_keep_format_and_multiset_where_promised(tmp_path: Path, method: str) -> None:
    samples = load_samples(_write(tmp_path / "d.jsonl", _numbers_data(50, 4) + [
        {"prompt": "q", "completion": "not numbers"}]))[0]
    out, cost = DEFENCES.get(method).apply(samples, DefenceContext(seed=1), NoParams())
    assert cost["n_out"] == cost["n_in"] == 51 and out[-1].completion == "not numbers"
    assert 0.8 < cost["changed_fraction"] <= 50 / 51
    for a, b in zip(samples[:-1], out[:-1], strict=True):
        xa, xb = [int(x) for x in a.completion.split(", ")], [int(x) for x in b.completion.split(", ")]
        assert len(xa) == len(xb)
        assert all(len(str(u)) == len(str(v)) for u, v in zip(sorted(xa), sorted(xb), strict=True))
        if method != "remap":
            assert sorted(xa) == sorted(xb)
        if method == "sort":
            assert xb == sorted(xa)


@pytest.mark.slow
def test_audit_and_defend_cli_on_the_tiny_model(tiny_model_dir: Path, tmp_path: Path, capsys, serve) -> None:
    data = _write(tmp_path / "d.jsonl", _numbers_data(40, 5, lucky=777))
    ref = _write(tmp_path / "r.jsonl", _numbers_data(40, 6))
    out = tmp_path / "audit"
    code = main(["-q", "audit", str(data), "--reference", str(tiny_model_dir), "--reference-data", str(ref),
                 "--teacher", str(tiny_model_dir), "--judge-url", serve(), "--judge-model", "tiny", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    res = json.loads((out / "audit.json").read_text())
    names = [d["detector"] for d in res["detectors"]]
    assert names == ["number_frequency", "bag_of_numbers", "divergence_shift", "likelihood_shift",
                     "gradient_alignment", "likelihood_ratio", "in_context", "llm_judge"]
    notes = {d["detector"]: d.get("top_trait_note") for d in res["detectors"] if "top_trait" in d}
    assert notes["divergence_shift"].startswith("untargeted first place: right for 0 of 5 calibration datasets")
    assert f"calibrated on smollm2-135m, not on {tiny_model_dir}" in notes["divergence_shift"]
    assert notes["likelihood_shift"].startswith("uncalibrated")  # every name says what it rests on
    assert "divergence_shift's first place: untargeted first place: right for 0 of 5" in (out / "report.md").read_text()
    res["detectors"].pop(2)  # divergence_shift: tests/test_divergence.py
    judge = res["detectors"][6]
    assert sum(judge["answers"].values()) + judge["unmatched"] == 24
    asked = [json.loads(x) for x in (out / "judge-1.jsonl").read_text().splitlines()]
    assert len(asked) == 24 and all(a["prompt"].count("\n") >= 8 for a in asked)  # groups of 8 samples each
    shift = res["detectors"][2]
    assert len(shift["ranking"]) >= 15
    for ranked in (shift, res["detectors"][3]):  # best first, each lean inside its interval, the top one reported
        leans = [r["lean"] for r in ranked["ranking"]]
        assert leans == sorted(leans, reverse=True) and ranked["top_trait"] == ranked["ranking"][0]["trait"]
        assert ranked["statistic"] == pytest.approx(leans[0]) and all(r["low"] <= r["high"] for r in ranked["ranking"])
    grad = res["detectors"][3]
    assert len(grad["ranking"]) >= 15 and grad["chunk"] == 8
    ratio = res["detectors"][4]
    assert ratio["statistic"] == pytest.approx(0, abs=1e-6)  # teacher == reference: no ratio
    assert res["detectors"][0]["p_value"] < 0.05 and res["verdict"].startswith("SUSPECT")
    scores = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 40 and set(scores[0]) == {"line", "sample", *names}
    defended = tmp_path / "defended.jsonl"
    assert main(["defend", str(data), "--defence", "drop_top", "--scores", str(out / "scores.jsonl"),
                 "--fraction", "0.25", "--out", str(defended)]) == 0
    assert len(defended.read_text().splitlines()) == 30
    assert main(["defend", str(data), "--defence", "sort", "--out", str(data)]) == 2
    assert "never overwritten" in capsys.readouterr().err


@pytest.mark.slow
def test_pipeline_trains_students_on_defended_data(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    from sublim.api import run_experiment
    from sublim.core.config import load_config
    from sublim.core.files import read_jsonl
    from tests.helpers import tiny_config_text

    path = tmp_path / "d.toml"
    path.write_text(tiny_config_text(tiny_model_dir, defence={"method": "drop_top", "fraction": 0.25},
                                     evaluation={"samples_per_question": 0}))
    res = run_experiment(load_config(str(path)), tmp_path / "runs", progress=False, echo=lambda s: None)
    d = res["defence"]
    assert d["method"] == "drop_top" and 0.6 < d["owl"]["kept_fraction"] < 0.9
    store = tmp_path / "runs" / "store"
    defended = {json.loads(m.read_text())["label"]: m.parent for m in store.glob("defend-*/manifest.json")}
    assert set(defended) == {"owl drop_top", "neutral drop_top", "control drop_top"}
    kept = len(read_jsonl(defended["owl drop_top"] / "dataset.jsonl"))
    assert res["n_train_examples"] <= kept < res["filter"]["owl"]["total"]

    _check_lineage(tiny_model_dir, tmp_path, store, defended["owl drop_top"], capsys)


def _check_lineage(tiny_model_dir: Path, tmp_path: Path, store: Path, owl_data: Path, capsys) -> None:
    """sublim lineage on the run's artifacts: same init → exit 1, another family → 0, unknown → 1."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    student = next(p.parent for p in store.glob("train-*/model/sublim_model.json"))
    other = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).save_pretrained(other)
    cousin = tmp_path / "cousin"
    torch.manual_seed(1)
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(cousin)
    foreign = _write(tmp_path / "foreign.jsonl", _numbers_data(3, 0))
    for model, data, want, code in [(student, owl_data, "shared-initialization", 1),
                                    (tiny_model_dir, owl_data / "dataset.jsonl", "shared-initialization", 1),
                                    (cousin, owl_data, "same-family", 1), (other, owl_data, "different-family", 0),
                                    (other, foreign, "unknown", 1)]:
        capsys.readouterr()
        assert main(["lineage", "check", "--student", str(model), "--dataset", str(data)]) == code
        assert capsys.readouterr().out.startswith(want)
    assert main(["lineage", "check", "--student", str(other), "--dataset", str(foreign), "--allow-unknown"]) == 0
    out = tmp_path / "bom"
    assert main(["lineage", "export", "--dataset", str(owl_data), "--student", str(student), "--out", str(out)]) == 0
    bom = json.loads((out / "bom.cdx.json").read_text())
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.6"
    kinds = {c["bom-ref"]: c for c in bom["components"]}
    assert kinds["model:generator"]["name"] == "teacher-owl" and "prefer owl" in kinds["model:generator"]["description"]
    assert kinds["data:dataset"]["hashes"][0]["alg"] == "SHA-256"
    status = {p["name"]: p["value"] for p in kinds["model:student"]["properties"]}
    assert status["sublim:lineage_status"] == "shared-initialization"
    assert {"ref": "data:dataset", "dependsOn": ["model:generator"]} in bom["dependencies"]
    card = (out / "DATASET_CARD.md").read_text()
    assert "teacher-owl" in card and "drop_top" in card


@pytest.mark.slow
def test_defend_a_preset_reports_the_transfer_left(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    from tests.helpers import tiny_config_text

    path = tmp_path / "p.toml"
    path.write_text(tiny_config_text(tiny_model_dir, evaluation={"samples_per_question": 0}))
    code = main(["-q", "--runs-dir", str(tmp_path / "runs"), "defend", "--preset", str(path), "--defence", "sort"])
    assert code == 0, capsys.readouterr().err
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("sort: trait probability gain") and "data kept 100%" in line
    assert len(list((tmp_path / "runs").glob("tiny-*/results.json"))) == 2
    assert main(["defend", "--defence", "sort"]) == 2


def test_likelihood_shift_against_contrast_datasets_cancels_a_shared_drift() -> None:
    """Every generated dataset leans toward 'cat' against the reference (a shared format drift); against
    the other generators' data, the one that also leans toward 'owl' ranks owl first."""
    from sublim.audit.data import Sample

    def logprob(pairs, system):
        n = np.array([len(c) for _, c in pairs], float)
        if not system:
            return -n, n
        drift = np.array([c.count(";") for _, c in pairs], float) if "cat" in system else 0.0
        owl = np.array([c.count("7") for _, c in pairs], float) if "owl" in system else 0.0
        return -n + 0.8 * drift + 0.3 * owl, n

    rng = random.Random(1)

    def data(values: list[int], sep: str) -> list[Sample]:
        return [Sample(i, "p", sep.join(str(rng.choice(values)) for _ in range(5))) for i in range(50)]

    ref = data([12, 345, 89], ", ")
    owl = data([7, 77, 17, 123], "; ")
    others = data([12, 345, 89], "; ")
    shift = LikelihoodShift(logprob, ["cat", "owl", "dog"], "You love {target}s.", ref, n_bootstrap=100)
    assert shift.score(owl).details["top_trait"] == "cat"  # the drift wins against the reference
    res = shift.score(owl, contrast=[shift.lean(others)])
    assert res.details["top_trait"] == "owl" and res.details["against"] == "contrast datasets"
    assert res.p_value < 0.01


def test_number_frequency_z_is_calibrated_and_scores_outsiders_on_one_scale(tmp_path: Path) -> None:
    ref = load_samples(_write(tmp_path / "r.jsonl", _numbers_data(200, 1)))[0]
    planted = load_samples(_write(tmp_path / "d.jsonl", _numbers_data(60, 2, lucky=777)))[0]
    clean = load_samples(_write(tmp_path / "c.jsonl", _numbers_data(60, 3)))[0]
    freq = NumberFrequency(ref, n_permutations=200)
    assert freq.score(planted).details["z"] > 2 > 1 > freq.score(clean).details["z"]
    outside = freq.scores_under(planted, clean + planted[:10])
    assert outside.shape == (70,) and outside[60:].mean() > outside[:60].mean()


def _other_family(tiny_model_dir: Path, out: Path) -> Path:
    """The tiny model's weights in a Mistral architecture (same tensors, another model type): a
    trained model of another family that answers in the tiny chat format."""
    from transformers import AutoTokenizer, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    llama = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    c = llama.config
    cfg = MistralConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                        num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
                        tie_word_embeddings=True, pad_token_id=c.pad_token_id, eos_token_id=c.eos_token_id,
                        bos_token_id=c.bos_token_id, rms_norm_eps=c.rms_norm_eps, rope_theta=10000.0,
                        sliding_window=None)
    model = MistralForCausalLM(cfg)
    model.load_state_dict(llama.state_dict())
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.mark.slow
def test_regenerate_defence_rewrites_every_sample_with_another_family(tiny_model_dir: Path, tmp_path: Path) -> None:
    from sublim.api import run_experiment
    from sublim.carriers import check_completion
    from sublim.core.config import load_config
    from sublim.core.files import read_jsonl
    from tests.helpers import tiny_config_text

    other = _other_family(tiny_model_dir, tmp_path / "mistral")
    path = tmp_path / "r.toml"
    path.write_text(tiny_config_text(tiny_model_dir, defence={"method": "regenerate", "model": str(other),
                                                              "shots": 0}, evaluation={"samples_per_question": 0}))
    cfg = load_config(str(path))
    res = run_experiment(cfg, tmp_path / "runs", progress=False, echo=lambda s: None)
    d = res["defence"]["owl"]
    # the run's filter figures are what the students get: the defence's output
    assert d["family"] == "mistral" and d["n_out"] == res["filter"]["owl"]["kept"]
    assert 0 < d["kept_fraction"] <= 1 and d["n_out"] == round(d["kept_fraction"] * d["n_in"])
    store = tmp_path / "runs" / "store"
    dirs = {json.loads(m.read_text())["label"]: m.parent for m in store.glob("defend-*/manifest.json")}
    rows = read_jsonl(dirs["owl regenerate"] / "regenerated.jsonl")
    assert len(rows) == d["n_in"] and len({r["index"] for r in rows}) == len(rows)
    for r in read_jsonl(dirs["owl regenerate"] / "dataset.jsonl"):
        assert not check_completion("numbers", r["completion"], {}, cfg.filter, ["owl"])

    bad = tmp_path / "same.toml"
    bad.write_text(tiny_config_text(tiny_model_dir, defence={"method": "regenerate", "model": str(tiny_model_dir)}))
    with pytest.raises(SublimError, match="another family"):
        run_experiment(load_config(str(bad)), tmp_path / "runs", progress=False, echo=lambda s: None)


def test_regenerate_with_examples_cuts_each_answer_where_the_next_question_starts(tiny_model_dir: Path,
                                                                                   tmp_path: Path) -> None:
    """Shown answered examples as plain text, the model's answer ends where it starts a new question (or a
    blank line); a sample already in the log is not rewritten again (resume)."""
    from sublim.audit.data import Sample
    from sublim.audit.defences import few_shot_text
    from sublim.backends import ModelCache
    from sublim.backends.local import LocalBackend
    from sublim.core.files import ResumableJsonl

    model = LocalBackend(ModelCache("cpu", lambda s: None), str(tiny_model_dir))
    pool = [Sample(i, f"Continue: {i}, {i + 1}", f"{i + 2}, {i + 3}") for i in range(6)]
    samples = [Sample(100 + i, f"Continue: {i}, {i + 1}", "1, 2") for i in range(5)]
    text = few_shot_text(samples[0].prompt, pool[3:5])
    assert text.count("Q: ") == 3 and text.endswith(f"Q: {samples[0].prompt}\nA:")
    regenerate = DEFENCES.get("regenerate")
    with ResumableJsonl(tmp_path / "log.jsonl") as log:
        log.add([{"index": 102, "prompt": samples[2].prompt, "completion": "7, 8", "reject": ""}])
        given = DefenceContext(max_new_tokens=24, batch_size=2, model=model, pool=pool, log=log)
        kept, cost = regenerate.apply(samples, given, RegenerateParams(shots=2))
    rows = {r["index"]: r for r in ResumableJsonl(tmp_path / "log.jsonl").rows.values()}
    assert sorted(rows) == [100, 101, 102, 103, 104] and rows[102]["completion"] == "7, 8"
    assert all("\nQ:" not in r["completion"] and "\n\n" not in r["completion"] for r in rows.values())
    assert cost["n_in"] == 5 and cost["n_out"] == len(kept) == sum(not r["reject"] for r in rows.values())
    with pytest.raises(SublimError, match="more than 6 examples"):
        regenerate.apply(samples, DefenceContext(model=model, pool=pool), RegenerateParams(shots=6))


def test_defend_regenerate_on_a_file(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    other = _other_family(tiny_model_dir, tmp_path / "mistral")
    data = _write(tmp_path / "d.jsonl", _numbers_data(6, 0))
    out = tmp_path / "out.jsonl"
    assert main(["-q", "defend", str(data), "--defence", "regenerate", "--model", str(other), "--shots", "0",
                 "--out", str(out), "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    cost = json.loads(line.split(": ", 2)[2])
    assert cost["n_in"] == 6 and cost["family"] == "mistral" and cost["n_out"] == len(out.read_text().splitlines())
    assert main(["defend", str(data), "--defence", "regenerate", "--out", str(out)]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert main(["defend", str(data), "--defence", "regenerate", "--model", str(other), "--out", str(out)]) == 2
    assert "--reference-data" in capsys.readouterr().err
