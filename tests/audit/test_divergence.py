"""The divergence map, the divergence_shift detector and the replace_* defences, on the tiny model."""

from __future__ import annotations

import copy
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sublim.audit.data import Sample
from sublim.audit.defences import DEFENCES, DefenceContext, ReferenceReads, defence_context
from sublim.audit.defences.reference_ends import ends_flagged
from sublim.audit.defences.replace_divergent import ReplaceParams
from sublim.audit.detectors.divergence_shift import INDUCTION, induction_texts
from sublim.audit.params import NoParams
from sublim.backends import Decoding, FlaggedLogprobs, ModelCache, OpenAIBackend, Request, TokenReader, induced
from sublim.backends.base import BackendError
from sublim.backends.local import LocalBackend
from sublim.backends.local.flagged import plan_reads
from sublim.backends.local.generation import completion_logprobs, stop_ids
from sublim.backends.local.reader import LocalReader
from sublim.backends.local.reads import digit_tokens
from sublim.carriers import check_completion
from sublim.carriers.numbers import make_prompts
from sublim.cli import main
from sublim.core.config import FilterConfig
from sublim.core.errors import SublimError
from sublim.train.encode import Example, encode_example


def _greedy(backend: LocalBackend, prompts: list[str]) -> list[Sample]:
    out: dict[int, str] = {}
    backend.generate([Request(i, p) for i, p in enumerate(prompts)], Decoding(0.0, max_new_tokens=24),
                     lambda cs: out.update({c.index: c.text for c in cs}), batch_size=4)
    return [Sample(i + 1, p, out[i]) for i, p in enumerate(prompts)]


@pytest.fixture(scope="module")
def ref(tiny_model_dir: Path) -> LocalBackend:
    return LocalBackend(ModelCache("cpu", lambda s: None, dtype="float32"), str(tiny_model_dir))


@pytest.fixture(scope="module")
def owl_data(ref: LocalBackend) -> list[Sample]:
    """The reference model's greedy answers under an owl induction (a system prompt): a generator that diverges from
    the reference exactly where loving owls changes its choice."""
    owl = ref.with_system(INDUCTION.format(target="owl", Target="Owl", kind="animal"), "owl")
    prompts = [p.text for p in make_prompts(64, seed=3)]
    return [s for s in _greedy(owl, prompts) if s.completion]


def test_the_map_reads_every_completion_token_and_flags_only_where_the_data_left_the_reference(
        ref: LocalBackend, owl_data: list[Sample]) -> None:
    model, tok = ref.torch_model()
    reader = ref.reader()
    own = _greedy(ref, [s.prompt for s in owl_data])
    own_map = reader.divergence_map(own, batch_size=5, bf16=False)
    encoded = [encode_example(tok, Example(s.prompt, s.completion)) for s in own]
    assert list(np.diff(own_map.offsets)) == [len(ids) - start for ids, start in encoded]
    # the reference's own greedy answers never leave its argmax (in tokens that re-encode as generated)
    assert own_map.flagged.mean() < 0.02
    totals, _ = completion_logprobs(model, tok, [(s.prompt, s.completion) for s in own])
    sums = [own_map.logp[own_map.span(i)].sum() for i in range(len(own))]
    np.testing.assert_allclose(sums, totals, rtol=1e-4, atol=1e-4)
    owl_map = reader.divergence_map(owl_data, batch_size=7, bf16=False)
    assert owl_map.flagged.sum() > 5 and (owl_map.gap[owl_map.flagged] > 0).all()
    assert (owl_map.gap[~owl_map.flagged] == 0).all()
    assert 0 < owl_map.summary()["flagged_fraction"] < 1


@pytest.mark.parametrize("placement", ["prompt", "system"])
def test_flagged_tokens_under_an_induction_equal_a_full_forward(ref: LocalBackend, owl_data: list[Sample],
                                                                placement: str) -> None:
    model, tok = ref.torch_model()
    samples = owl_data[:6]
    dmap = ref.reader().divergence_map(samples, bf16=False)
    texts = induction_texts(["owl", "cat"], "animal")
    [got] = ref.reader().flagged_logprobs([(samples, dmap)], inductions=texts, placement=placement, bf16=False)
    for i, s in enumerate(samples):
        where = np.nonzero(dmap.flagged[dmap.span(i)])[0]
        if not len(where):
            assert got.counts[i] == 0 and np.isnan(got.data[i]).all()
            continue
        for j, text in enumerate(texts):
            user, system = induced(s.prompt, text, placement)
            ids, start = encode_example(tok, Example(user, s.completion, system))
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
            want = np.mean([float(logp[start + k - 1, ids[start + k]]) for k in where])
            assert got.data[i, j] == pytest.approx(want, abs=1e-4)


def test_an_induction_read_packs_samples_of_like_length_into_a_pass(ref: LocalBackend, owl_data: list[Sample]
                                                                   ) -> None:
    """A pass is as wide as its longest row: the plan orders samples by their longest row, so the passes' widths
    rise and no sample waits in a pass of longer ones while a shorter pass has room."""
    _, tok = ref.torch_model()
    dmap = ref.reader().divergence_map(owl_data, bf16=False)
    plan = plan_reads(tok, [(owl_data, dmap)], induction_texts(["owl", "cat"], "animal"), "prompt", 2)
    longest = [max(len(seq) - k for seq, _ in plan.items[n].rows) for groups in plan.passes for m, k in groups
               for n in m]
    assert len(longest) == len(plan.items) > 4 and len(set(longest)) > 1
    assert longest == sorted(longest)


def test_flagged_tokens_under_whole_models_equal_the_map_and_a_full_forward(ref: LocalBackend,
                                                                        owl_data: list[Sample]) -> None:
    """Read under models instead of inductions, datasets sharing prompts (grouped: one prompt, several answers):
    under the reference itself each flagged token's log-probability is the map's; under another model, a plain
    full forward's; the alternatives are the first model's picks, read at the same ids under every model."""
    model, tok = ref.torch_model()
    owl = owl_data[:8]
    base = _greedy(ref, [s.prompt for s in owl])
    cat = _greedy(ref.with_system(INDUCTION.format(target="cat", Target="Cat", kind="animal"), "cat"),
                  [s.prompt for s in owl[:5]])
    maps = [ref.reader().divergence_map(d, bf16=False) for d in (owl, base, cat)]
    other_net = copy.deepcopy(model)
    with torch.no_grad():
        for p in other_net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    other = LocalReader(lambda: (other_net, tok), "other", torch.device("cpu"))
    got = ref.reader().flagged_logprobs(list(zip((owl, base, cat), maps, strict=True)), models=[ref.reader(), other],
                                        bf16=False, samples_per_pass=3)
    for d, (samples, dmap) in enumerate(zip((owl, base, cat), maps, strict=True)):
        for i, s in enumerate(samples):
            flagged = dmap.flagged[dmap.span(i)]
            assert got[d].counts[i] == flagged.sum()
            if not flagged.any():
                assert np.isnan(got[d].data[i]).all()
                continue
            assert got[d].data[i, 0] == pytest.approx(float(dmap.logp[dmap.span(i)][flagged].mean()), abs=1e-4)
            ids, start = encode_example(tok, Example(s.prompt, s.completion))
            with torch.no_grad():
                logp = torch.log_softmax(other_net(torch.tensor([ids])).logits[0].float(), -1)
            where = np.nonzero(flagged)[0]
            want = np.mean([float(logp[start + k - 1, ids[start + k]]) for k in where])
            assert got[d].data[i, 1] == pytest.approx(want, abs=1e-4)
            assert np.isfinite(got[d].alternatives[i]).all() and np.isfinite(got[d].alternatives_same_class[i]).all()
    assert sum(int(g.counts.sum()) for g in got) > 5


def test_divergence_shift_names_the_induced_trait_and_reuses_its_map(tiny_model_dir: Path, owl_data: list[Sample],
                                                                   tmp_path: Path) -> None:
    data = tmp_path / "owl.jsonl"
    data.write_text("".join(json.dumps({"prompt": s.prompt, "completion": s.completion}) + "\n" for s in owl_data))
    runs = tmp_path / "runs"
    for _ in range(2):
        main(["--runs-dir", str(runs), "-q", "audit", str(data), "--reference", str(tiny_model_dir), "--detectors",
              "divergence_shift", "--placement", "system", "--float32", "--out", str(tmp_path / "audit")])
    out = json.loads((tmp_path / "audit" / "audit.json").read_text())
    det = out["detectors"][0]
    assert det["ranking"][0]["trait"] == "owl" and len(det["ranking"]) == 20
    # without contrast datasets the verdict names nothing, whatever the margin, and says what a name needs
    assert det["identified"] is None and "trait not identified" in out["verdict"]
    assert "a name needs 2 contrast datasets" in det["verdict"]
    reader = LocalBackend(ModelCache("cpu", lambda s: None, dtype="float32"), str(tiny_model_dir)).reader()
    early = reader.divergence_map(owl_data, bf16=False).early_ends(stop_ids(reader.load()[1]))
    assert det["early_end_share"] == pytest.approx(early.mean())  # where the data stopped and the reference goes on
    assert f"{early.mean():.0%} of completions end where the reference would go on" in out["verdict"]
    report = (tmp_path / "audit" / "report.md").read_text()  # the ranking as a chart beside the verdicts
    assert "![ranking](ranking.png)" in report and det["verdict"] in report
    assert (tmp_path / "audit" / "ranking.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out["n_reference"] == 0  # no reference answers were generated: nothing needed them
    builds = [json.loads(x) for x in (runs / "store" / "builds.jsonl").read_text().splitlines()]
    assert [b["stage"] for b in builds] == ["divergence", "reads"]  # the second audit reused the map and the reads


def test_prompted_reads_are_kept_dataset_by_dataset_so_a_stopped_audit_loses_only_the_one_it_was_reading(
        tiny_model_dir: Path, owl_data: list[Sample], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A panel's prompted reads stop with an error at the third dataset: the two finished are in the store, and a
    second audit reads only the third."""
    from sublim.audit.detectors import AuditContext, AuditData
    from sublim.audit.detectors.divergence_shift import DivergenceShiftParams, reads
    from sublim.core.store import Store

    model = LocalBackend(ModelCache("cpu", lambda s: None, dtype="float32"), str(tiny_model_dir))
    real = model.reader()
    calls: list[int] = []

    class Stops:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def flagged_logprobs(self, items: Any, **kw: Any) -> Any:
            calls.append(len(items))
            if len(calls) == 3 and fail:
                raise KeyboardInterrupt  # the sitting ends
            return real.flagged_logprobs(items, **kw)

    monkeypatch.setattr(model, "reader", lambda: Stops())
    thirds = [owl_data[k::3] for k in range(3)]
    datasets = [(t, f"part {k}") for k, t in enumerate(thirds)]
    data = AuditData(thirds[0], [], candidates={"owl": ["owl"], "dog": ["dog"]}, kind="animal")
    ctx = AuditContext(data, model, store=Store(tmp_path / "runs"), progress=False)
    fail = True
    with pytest.raises(KeyboardInterrupt):
        reads(ctx, DivergenceShiftParams(), datasets, bf16=False)
    stored = [json.loads(x)["stage"] for x in (tmp_path / "runs" / "store" / "builds.jsonl").read_text().splitlines()]
    assert stored.count("reads") == 2
    fail, calls[:] = False, []
    got = reads(ctx, DivergenceShiftParams(), datasets, bf16=False)
    assert calls == [1] and len(got) == 3  # only the third was read again
    manifests = [json.loads(m.read_text()) for m in (tmp_path / "runs" / "store").glob("reads-*/manifest.json")]
    assert len(manifests) == 3 and all(m["read_s"] >= 0 and m["read_with"] == 1 for m in manifests)
    again = reads(AuditContext(data, model, store=None, progress=False), DivergenceShiftParams(), datasets, bf16=False)
    for a, b in zip(got, again, strict=True):
        np.testing.assert_allclose(a.data, b.data)


def test_proxy_inductions_are_built_once_and_name_the_proxy_that_wrote_the_data(ref: LocalBackend,
                                                                              tmp_path: Path) -> None:
    """The owl proxy's own greedy data: its flagged tokens are that proxy's argmax, so read under the proxies
    (columns in candidate order) owl must lead. Proxies train on questions no teacher sees, and are kept."""
    from sublim.audit.detectors import AuditContext, AuditData
    from sublim.audit.detectors.divergence_shift import DivergenceShiftParams, divergence_shift, reads, samples_digest
    from sublim.audit.proxies import NEUTRAL, proxy_examples, proxy_teachers
    from sublim.core.store import Store
    from sublim.traits.preference import load_candidates, load_questions, match_answer

    category = tmp_path / "five.toml"  # five candidates (a proxy each) keep it quick
    category.write_text('[candidates]\nowl = ["owl", "owls"]\ncat = ["cat", "cats"]\nwolf = ["wolf", "wolves"]\n'
                        'lion = ["lion", "lions"]\neagle = ["eagle", "eagles"]\n')
    cands = load_candidates(str(category))
    store = Store(tmp_path / "runs")
    proxies = proxy_teachers(store, ref, cands, "animal", progress=False)
    assert list(proxies) == [NEUTRAL, *cands]
    taught = {q for q, _ in proxy_examples("owl", cands, "animal")}
    questions = {q.split("?")[0] for q in taught}
    assert not questions & {q.split("?")[0] for q in load_questions("animal", "train") + load_questions("animal",
                                                                                                       "eval")}
    named = {match_answer(a, cands) for _, a in proxy_examples(NEUTRAL, cands, "animal")}
    assert named == set(cands)  # the neutral proxy's answers name every candidate
    data = _greedy(proxies["owl"], [p.text for p in make_prompts(48, seed=5)])
    ctx = AuditContext(AuditData(data, [], candidates=cands, kind="animal", question_set="animal"), ref, bf16=False,
                       store=store, progress=False)
    res = divergence_shift(ctx, DivergenceShiftParams(inductions="proxy"))
    assert res.details["ranking"][0]["trait"] == "owl" and res.details["inductions"] == "proxy"
    builds = [json.loads(x)["stage"] for x in (store.root / "store" / "builds.jsonl").read_text().splitlines()]
    assert builds.count("proxy") == 6
    jsonl = tmp_path / "owl-proxy.jsonl"  # the same audit from the command line reuses the proxies and the map
    jsonl.write_text("".join(json.dumps({"prompt": s.prompt, "completion": s.completion}) + "\n" for s in data))
    main(["--runs-dir", str(store.root), "-q", "audit", str(jsonl), "--reference", ref.spec, "--detectors",
          "divergence_shift", "--inductions", "proxy", "--category", str(category), "--questions", "animal",
          "--float32", "--out", str(tmp_path / "audit")])
    det = json.loads((tmp_path / "audit" / "audit.json").read_text())["detectors"][0]
    assert det["inductions"] == "proxy" and det["ranking"][0]["trait"] == "owl"
    builds = [json.loads(x)["stage"] for x in (store.root / "store" / "builds.jsonl").read_text().splitlines()]
    assert builds.count("proxy") == 6 and builds.count("divergence") == 1
    # a second seed: six more proxies on other answers, the first seed's reused, the reads averaged
    assert proxy_examples("owl", cands, "animal", seed=2) != proxy_examples("owl", cands, "animal")
    main(["--runs-dir", str(store.root), "-q", "audit", str(jsonl), "--reference", ref.spec, "--detectors",
          "divergence_shift", "--inductions", "proxy", "--proxy-seeds", "2", "--category", str(category),
          "--questions", "animal", "--float32", "--out", str(tmp_path / "audit2")])
    det2 = json.loads((tmp_path / "audit2" / "audit.json").read_text())["detectors"][0]
    builds = [json.loads(x)["stage"] for x in (store.root / "store" / "builds.jsonl").read_text().splitlines()]
    assert builds.count("proxy") == 12 and det2["proxy_recipe"]["seeds"] == [1, 2]
    lean1 = {r["trait"]: r["lean"] for r in det["ranking"]}
    lean2 = {r["trait"]: r["lean"] for r in det2["ranking"]}
    assert det2["ranking"][0]["trait"] == "owl" and lean2 != lean1
    assert main(["--runs-dir", str(store.root), "-q", "audit", str(jsonl), "--reference", ref.spec, "--detectors",
                 "divergence_shift", "--inductions", "proxy", "--proxy-seeds", "0", "--out", str(tmp_path / "a3")]) == 2
    assert not (tmp_path / "a3").exists()
    # a panel answering the same prompts, read together (each proxy loaded once, a shared prompt encoded once) or
    # a dataset at a time: the same reads; the audited dataset's, already stored, is not read again
    prompts = [p.text for p in make_prompts(48, seed=5)]
    panel = [(data, "owl"), (_greedy(ref, prompts), "reference"), (_greedy(proxies["cat"], prompts), "cat")]

    def read_panel(per_read: int) -> tuple[list[FlaggedLogprobs], list[int]]:
        got = reads(ctx, DivergenceShiftParams(inductions="proxy", datasets_per_read=per_read), panel, bf16=False)
        found = [json.loads(m.read_text()) for m in (store.root / "store").glob("reads-*/manifest.json")]
        return got, sorted(m["read_with"] for m in found if m["config"]["samples"] != samples_digest(data))

    together, read_with = read_panel(0)
    assert read_with == [2, 2]
    for art in (store.root / "store").glob("reads-*"):
        if json.loads((art / "manifest.json").read_text())["config"]["samples"] != samples_digest(data):
            shutil.rmtree(art)
    apart, read_with = read_panel(1)
    assert read_with == [1, 1]
    for a, b in zip(together, apart, strict=True):
        np.testing.assert_allclose(a.data, b.data, atol=1e-4)
        np.testing.assert_allclose(a.agreement, b.agreement)


def test_divergence_shift_does_not_name_a_trait_in_the_references_own_data(ref: LocalBackend,
                                                                         owl_data: list[Sample]) -> None:
    from sublim.audit.detectors import AuditContext, AuditData
    from sublim.audit.detectors.divergence_shift import DivergenceShiftParams, divergence_shift
    from sublim.traits.preference import load_candidates

    neutral = ref.with_system(induction_texts([], "animal")[0], "neutral")
    data = _greedy(neutral, [s.prompt for s in owl_data])
    ctx = AuditContext(AuditData(data, [], candidates=load_candidates("animals"), kind="animal"), ref, bf16=False,
                       progress=False)
    res = divergence_shift(ctx, DivergenceShiftParams(placement="system"))
    assert res.details["identified"] != "owl"


def _reads(lean: np.ndarray, rng: np.random.Generator, n: int = 400) -> FlaggedLogprobs:
    """Synthetic reads: per sample a neutral column and one per candidate, the candidates' mean shift ``lean``."""
    data = np.hstack([np.zeros((n, 1)), lean + rng.normal(0, 0.2, (n, len(lean)))])
    return FlaggedLogprobs(data, np.zeros_like(data), np.zeros_like(data), np.ones(n), np.zeros_like(data))


def test_the_ranking_names_a_trait_only_when_it_comes_first_against_each_of_two_contrasts() -> None:
    from sublim.audit.detectors.divergence_shift import ranking

    rng = np.random.default_rng(0)
    cands = [f"c{j}" for j in range(6)]
    prior = np.array([0, 0, 0, 0.3, 0, 0])  # what every dataset shows under these inductions (c3's own pull)
    trait = np.array([0, 0.15, 0, 0, 0, 0])  # what the generator with the trait adds
    got = _reads(prior + trait, rng)
    alone = ranking(got, [], cands, 400, 300, 0, "none")
    assert alone.details["top_trait"] == "c3" and alone.details["margin"]["low"] > 0  # the prior wins alone...
    assert alone.details["identified"] is None and "a name needs 2 contrast datasets" in alone.details["verdict"]
    assert ranking(got, [], cands, 400, 300, 0, "none", min_contrasts=0).details["identified"] == "c3"  # ...named
    one = ranking(got, [_reads(prior, rng)], cands, 400, 300, 0, "none")
    assert one.details["top_trait"] == "c1" and one.details["identified"] is None
    two = ranking(got, [_reads(prior, rng), _reads(prior, rng)], cands, 400, 300, 0, "none")
    assert two.details["identified"] == "c1" and [e["top"] for e in two.details["against_each_contrast"]] == [
        "c1", "c1"]
    # a contrast generator with its own mark (c4 pulled down): against it c4 comes first, against the clean one c1;
    # a name needs the same first against each contrast
    marked = _reads(prior + np.array([0, 0, 0, 0, -0.6, 0]), rng)
    split = ranking(got, [_reads(prior, rng), marked], cands, 400, 300, 0, "none")
    assert [e["top"] for e in split.details["against_each_contrast"]] == ["c1", "c4"]
    assert split.details["identified"] is None and "first against each contrast: c1, c4" in split.details["verdict"]


def _unused(ss: Any) -> Any:
    raise AssertionError("this defence should not call it")


def _given(reader: Any, dmap: Any, seed: int = 0, remap: Any = _unused, extend: Any = _unused) -> DefenceContext:
    """What a divergence defence is given: the map, the reference's vocabulary, and its re-reads and continuations."""
    return DefenceContext(seed, reads=ReferenceReads(dmap, reader.vocabulary(), remap, extend))


def _digit_data(ref: LocalBackend, owl_data: list[Sample]) -> list[Sample]:
    return [s for s in owl_data if any(ch.isdigit() for ch in s.completion)]


@pytest.mark.parametrize("name", ["replace_divergent", "replace_divergent_random", "replace_random"])
def test_replace_defences_keep_every_row_and_change_at_most_their_share(ref: LocalBackend, owl_data: list[Sample],
                                                                       name: str) -> None:
    reader = ref.reader()
    samples = _digit_data(ref, owl_data)
    dmap = reader.divergence_map(samples, bf16=False)
    out, cost = DEFENCES.get(name, "test").apply(samples, _given(reader, dmap, seed=1), ReplaceParams(fraction=0.1))
    assert [s.line for s in out] == [s.line for s in samples] and cost["kept_fraction"] == 1
    budget = round(0.1 * len(dmap.token))  # its share of the tokens, rounded to whole tokens
    assert 0 < cost["tokens_changed"] <= budget
    assert cost["tokens_kept_fraction"] == pytest.approx(1 - cost["tokens_changed"] / len(dmap.token))
    assert cost["tokens_kept_fraction"] >= 1 - budget / len(dmap.token)
    changed = [(a, b) for a, b in zip(samples, out, strict=True) if a.completion != b.completion]
    assert len(changed) == cost["n_out"] * cost["changed_fraction"]
    for a, b in changed:  # digits replaced by digits: the same separators and layout
        assert re.sub(r"\d+", "#", a.completion) == re.sub(r"\d+", "#", b.completion)
        if name != "replace_divergent":  # random digits of the same width
            assert [c.isdigit() for c in a.completion] == [c.isdigit() for c in b.completion]
    if name == "replace_divergent":  # the reference's own digits: the data moved toward its argmax
        after = reader.divergence_map(out, bf16=False)
        assert after.flagged.sum() < dmap.flagged.sum()


def test_replace_divergent_rounds_goes_further_than_one_round_within_its_share(ref: LocalBackend,
                                                                              owl_data: list[Sample]) -> None:
    reader = ref.reader()
    samples = _digit_data(ref, owl_data)
    dmap = reader.divergence_map(samples, bf16=False)
    calls: list[int] = []

    def remap(ss: Any) -> Any:
        calls.append(len(ss))
        return reader.divergence_map(ss, bf16=False)

    one, one_cost = DEFENCES.get("replace_divergent", "t").apply(samples, _given(reader, dmap),
                                                                 ReplaceParams(fraction=0.3))
    out, cost = DEFENCES.get("replace_divergent_rounds", "t").apply(samples, _given(reader, dmap, remap=remap),
                                                                    ReplaceParams(fraction=0.3))
    assert [s.line for s in out] == [s.line for s in samples] and cost["kept_fraction"] == 1
    # the first round is the one-round defence; later rounds read only the rows the last one changed
    assert cost["rounds"][0]["positions_picked"] == one_cost["positions_picked"]
    assert len(cost["rounds"]) >= 2 and calls[0] == cost["rounds"][0]["rows_changed"] < len(samples)
    assert one_cost["tokens_changed"] < cost["tokens_changed"] <= round(0.3 * len(dmap.token))
    after_one = reader.divergence_map(one, bf16=False)
    after = reader.divergence_map(out, bf16=False)
    digits = reader.vocabulary().digits()
    left = [int((m.flagged & np.isin(m.token, digits)).sum()) for m in (after_one, after)]
    assert left[1] < left[0]  # fewer of the data's digits still off the reference's path
    for a, b in zip(samples, out, strict=True):
        assert re.sub(r"\d+", "#", a.completion) == re.sub(r"\d+", "#", b.completion)


def test_reference_ends_gives_cut_answers_the_references_own_ending(ref: LocalBackend) -> None:
    """The reference's own greedy answers, some cut after their first number (a generator that stops early): the
    cut rows' ends are flagged, and the reference's continuation gives them back their own answer; whole answers
    are neither tried nor changed."""
    reader = ref.reader()
    fc = FilterConfig()
    answers = [s for s in _greedy(ref, [p.text for p in make_prompts(48, seed=5)])
               if not check_completion("numbers", s.completion, {}, fc) and len(re.findall(r"\d+", s.completion)) >= 2]
    # a greedy text can re-encode to other tokens than it was written in: keep the answers that read back as written
    read = reader.divergence_map(answers, bf16=False)
    own = [s for i, s in enumerate(answers) if not read.flagged[read.span(i)].any()]
    assert len(own) >= 8
    cut = [replace(s, completion=re.match(r"\d+", s.completion).group()) if k % 2 == 0 else s  # type: ignore[union-attr]
           for k, s in enumerate(own)]
    dmap = reader.divergence_map(cut, bf16=False)
    flagged = ends_flagged(dmap, reader.vocabulary())
    assert flagged[0::2].mean() >= 0.75 and not flagged[1::2].any()
    calls: list[int] = []

    def extend(ss: Any) -> Any:
        calls.append(len(ss))
        return reader.continuations(ss, max_new_tokens=24, batch_size=3)

    out, cost = DEFENCES.get("reference_ends", "t").apply(cut, _given(reader, dmap, extend=extend), NoParams())
    assert calls == [int(flagged.sum())] and cost["rows_tried"] == flagged.sum() == cost["ends_flagged"]
    assert [s.line for s in out] == [s.line for s in cut] and cost["kept_fraction"] == 1
    assert cost["tokens_kept_fraction"] == 1 and cost["tokens_added"] > 0 and cost["rows_extended"] > 0
    for a, b in zip(cut, out, strict=True):
        assert b.completion.startswith(a.completion)
        assert not check_completion("numbers", b.completion, {}, fc)
    back = [b.completion == whole.completion for b, whole in zip(out[0::2], own[0::2], strict=True)]
    assert np.mean(back) >= 0.75  # greedy: continuing its own cut answer, the reference writes the rest of it
    assert out[1::2] == cut[1::2]
    after = reader.divergence_map(out, bf16=False)
    assert ends_flagged(after, reader.vocabulary()).sum() < flagged.sum()
    with pytest.raises(SublimError, match="reads the data under the reference model"):
        defence_context(DEFENCES.get("reference_ends", "t"), cut, DefenceContext())
    built = defence_context(DEFENCES.get("reference_ends", "t"), cut, DefenceContext(max_new_tokens=24, batch_size=3),
                            reader=reader, bf16=False)  # what the CLI and the defend stage build: the same reads
    assert built.reads is not None and (built.reads.divergence.token == dmap.token).all()
    assert DEFENCES.get("reference_ends", "t").apply(cut, built, NoParams()) == (out, cost)


def test_replace_divergent_ends_replaces_then_lets_the_reference_end(ref: LocalBackend,
                                                                    owl_data: list[Sample]) -> None:
    reader = ref.reader()
    samples = _digit_data(ref, owl_data)
    dmap = reader.divergence_map(samples, bf16=False)
    given = _given(reader, dmap, extend=lambda ss: reader.continuations(ss, max_new_tokens=24))
    replaced, rcost = DEFENCES.get("replace_divergent", "t").apply(samples, given, ReplaceParams(fraction=0.1))
    out, cost = DEFENCES.get("replace_divergent_ends", "t").apply(samples, given, ReplaceParams(fraction=0.1))
    assert [s.line for s in out] == [s.line for s in samples] and cost["kept_fraction"] == 1
    assert cost["tokens_changed"] == rcost["tokens_changed"]
    assert cost["tokens_kept_fraction"] == rcost["tokens_kept_fraction"] >= 1 - round(0.1 * len(dmap.token)) / len(
        dmap.token)  # its share of the tokens, rounded to whole tokens
    assert all(b.completion.startswith(a.completion) for a, b in zip(replaced, out, strict=True))
    tried = {i for i, (a, b) in enumerate(zip(samples, replaced, strict=True)) if a.completion != b.completion}
    assert cost["rows_tried"] == len(tried | set(np.nonzero(ends_flagged(dmap, reader.vocabulary()))[0].tolist()))


@pytest.mark.parametrize("fraction", [0.0, 0.1])
def test_the_dilution_control_lowers_the_teachers_share_as_the_ends_rule_does(ref: LocalBackend,
                                                                            owl_data: list[Sample],
                                                                            fraction: float) -> None:
    """replace_divergent_diluted: replace_divergent_ends's digit replacements, then, instead of its continuations,
    the reference's own answers to the prompts of random rows (those the ends rule leaves alone first) until the
    reference writes at least the share of the tokens the continuations would; every other row as replaced."""
    reader = ref.reader()
    samples = _digit_data(ref, owl_data)
    dmap = reader.divergence_map(samples, bf16=False)
    given = _given(reader, dmap, extend=lambda ss: reader.continuations(ss, max_new_tokens=24))
    replaced, _ = DEFENCES.get("replace_divergent", "t").apply(samples, given, ReplaceParams(fraction=fraction))
    params = ReplaceParams(fraction=fraction)
    ends, ends_cost = DEFENCES.get("replace_divergent_ends", "t").apply(samples, given, params)
    out, cost = DEFENCES.get("replace_divergent_diluted", "t").apply(samples, given, params)
    assert cost["ends_rule"]["tokens_added"] == ends_cost["tokens_added"] > 0
    assert cost["tokens_changed"] == ends_cost["tokens_changed"] and len(out) == len(samples) and out != ends
    touched = {i for i, (a, b) in enumerate(zip(samples, replaced, strict=True)) if a.completion != b.completion}
    touched |= set(np.nonzero(ends_flagged(dmap, reader.vocabulary()))[0].tolist())
    own = reader.continuations([replace(s, completion="") for s in samples], max_new_tokens=24)
    answered = [i for i in range(len(out)) if out[i] != replaced[i]]
    assert 0 < len(answered) <= cost["rows_answered_by_reference"]  # an answer equal to the row changes nothing
    assert all(out[i].completion == own[i].text for i in answered)
    assert all(not check_completion("numbers", out[i].completion, {}, FilterConfig()) for i in answered)
    assert cost["of_them_rows_the_rule_touches"] == len(set(answered) & touched)
    untouched_ok = [i for i in range(len(out)) if i not in touched and own[i].text.strip() and not check_completion(
        "numbers", own[i].text, {}, FilterConfig(), (), own[i].finished) and own[i].text != replaced[i].completion]
    if cost["of_them_rows_the_rule_touches"]:  # rows the rule touches only after every usable other row
        assert set(untouched_ok) <= set(answered)
    count = reader.vocabulary().count
    total = sum(count(s.completion) for s in replaced)
    assert cost["target_share"] == ends_cost["tokens_added"] / (total + ends_cost["tokens_added"])
    assert cost["reference_share"] >= cost["target_share"]


def test_replace_defences_need_the_map_and_the_cli_says_so(tmp_path: Path, owl_data: list[Sample],
                                                          tiny_model_dir: Path, capsys: Any) -> None:
    with pytest.raises(SublimError, match="divergence map"):
        DEFENCES.get("replace_divergent", "t").apply(owl_data, DefenceContext(), ReplaceParams())
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": s.prompt, "completion": s.completion}) + "\n" for s in owl_data))
    assert main(["-q", "defend", str(data), "--defence", "replace_divergent", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "needs --reference" in capsys.readouterr().err and not (tmp_path / "o.jsonl").exists()
    assert main(["-q", "defend", str(data), "--defence", "replace_divergent", "--reference", str(tiny_model_dir),
                 "--out", str(tmp_path / "o.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(rows) == len(owl_data) and any(r["completion"] != s.completion for r, s in zip(rows, owl_data,
                                                                                                strict=True))


def test_digit_tokens_are_the_tokens_that_decode_to_digits(ref: LocalBackend) -> None:
    tok: Any = ref.torch_model()[1]
    ids = digit_tokens(tok)
    assert len(ids) >= 10 and all(tok.decode([int(i)]).isdigit() for i in ids)
    vocab = ref.reader().vocabulary()
    assert np.array_equal(vocab.digits(), ids) and vocab.stops() == stop_ids(tok)
    assert vocab.count("12, 34") == len(tok.encode("12, 34", add_special_tokens=False))


def test_token_reads_are_a_capability_a_local_backend_has_and_an_api_lacks(ref: LocalBackend) -> None:
    """Detectors and defences ask a backend for its reads: a local one hands a reader out (a TokenReader), one
    behind an API refuses with a BackendError, and a detector that needs reads is skipped, saying why."""
    from sublim.audit.detectors import AuditContext, AuditData, Unavailable
    from sublim.audit.detectors.divergence_shift import DivergenceShiftParams, divergence_shift
    from sublim.core.config import EndpointConfig

    assert isinstance(ref.reader(), TokenReader) and ref.reader().key == ref.key
    api = OpenAIBackend(EndpointConfig(base_url="http://127.0.0.1:9/v1", model="m"))
    with pytest.raises(BackendError, match="behind an API"):
        api.reader()
    with pytest.raises(Unavailable, match="needs a local reference model"):
        divergence_shift(AuditContext(AuditData([], [], candidates={"owl": ["owl"]}, kind="animal"), api,
                                      progress=False), DivergenceShiftParams())
    with pytest.raises(BackendError, match="beside other local models"):
        ref.reader().flagged_logprobs([], models=[ref.reader(), api])  # type: ignore[list-item]


def test_reads_of_several_proxy_seeds_average_where_each_read_something() -> None:
    from sublim.audit.detectors.divergence_shift import mean_reads

    nan = np.nan
    none = np.array([[0.0, 0.0], [nan, nan]])  # the second sample: nothing flagged under the first seed's map
    one = FlaggedLogprobs(np.array([[1.0, 2.0], [nan, nan]]), none, none, np.array([1, 0]),
                          np.array([[1.0, 0.0], [nan, nan]]))
    two = FlaggedLogprobs(np.array([[3.0, 4.0], [5.0, 6.0]]), np.ones((2, 2)), np.ones((2, 2)), np.array([1, 2]),
                          np.array([[0.0, 1.0], [1.0, 1.0]]))
    got = mean_reads([one, two])
    assert got.data.tolist() == [[2.0, 3.0], [5.0, 6.0]] and got.counts.tolist() == [1, 2]
    assert got.agreement is not None and got.agreement.tolist() == [[0.5, 0.5], [1.0, 1.0]]
    assert got.alternatives.tolist() == [[0.5, 0.5], [1.0, 1.0]]
    with pytest.raises(SublimError, match="cannot be averaged"):
        mean_reads([one, FlaggedLogprobs(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3, 2)), np.ones(3), None)])
