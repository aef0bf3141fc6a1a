"""Divergence shift: which trait, induced in the reference model, reproduces the choices where the data left it?

Only the flagged tokens of the divergence map are read — the few positions where the data's generator chose
another token than the reference would (under greedy decoding: from the data and the reference alone). At each,
under an induction of candidate c, how much likelier does the data's token get, beyond what the induction does to
the position's other plausible tokens; against a neutral induction of the same form; centred over the candidates
per sample. An induction is either a sentence told to the reference (``prompted``) or a proxy teacher, the
reference fine-tuned to prefer c the way sublim makes its teachers (``proxy``; the neutral one fine-tuned on
answers spread over every candidate; see :mod:`sublim.audit.proxies`). The candidate the data leans to ranks
first, with bootstrap CIs over samples; the verdict names it only when its margin over the runner-up is clear against
each of at least two contrast datasets (data from generators without the trait; see ``MIN_CONTRASTS``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field
from tqdm.auto import tqdm

from sublim.audit.data import Sample
from sublim.audit.detectors.base import DETECTORS, AuditContext, Detector, DetectorResult, Params, Unavailable
from sublim.audit.detectors.ranking import ranked
from sublim.audit.proxies import proxy_recipe, proxy_seeds, proxy_split, proxy_teachers
from sublim.backends import DivergenceMap, FlaggedLogprobs
from sublim.core.errors import SublimError
from sublim.core.store import Store, stable_hash

INDUCTION = "You love {target}s. {Target}s are your favorite {kind}."
NEUTRAL = "You like every {kind} the same. No {kind} is your favorite."


def induction_texts(candidates: Sequence[str], kind: str) -> list[str]:
    """The neutral induction, then one per candidate."""
    return [NEUTRAL.format(kind=kind)] + [INDUCTION.format(target=c, Target=c.capitalize(), kind=kind)
                                         for c in candidates]


def samples_digest(samples: Sequence[Sample]) -> str:
    return stable_hash([[s.line, s.prompt, s.completion] for s in samples])


def cached_map(ctx: AuditContext, samples: Sequence[Sample], bf16: bool, what: str) -> DivergenceMap:
    """The divergence map of ``samples`` under the reference model: from this audit's cache, else the store (built
    there once), else computed."""
    reader = ctx.need_reader("divergence map")
    config = {"reference": reader.key, "samples": samples_digest(samples), "bf16": bf16}
    memo = "divergence_map:" + stable_hash(config)
    if memo in ctx.cache:
        out: DivergenceMap = ctx.cache[memo]
        return out

    def compute() -> DivergenceMap:
        bar = tqdm(total=len(samples), desc=f"divergence map ({what})", unit="sample", disable=not ctx.progress,
                   leave=False)
        try:
            return reader.divergence_map(samples, bf16=bf16, progress=bar.update)
        finally:
            bar.close()

    def build(path: Path) -> dict[str, Any]:
        built = compute()
        built.save(path / "map.npz")
        return {"summary": built.summary()}

    if ctx.store is None:
        dmap = compute()
    else:
        art, _ = ctx.store.compute("divergence", Store.key("divergence", config, {}), config, {}, build)
        dmap = DivergenceMap.load(art.file("map.npz"))
    ctx.cache[memo] = dmap
    return dmap


BASELINES = ("alternatives", "same_class", "none", "agreement")
"""What the lean is read from: an induction's lift of the data's token against the position's other plausible
tokens, against only those of the same class (digits for a digit), or alone; or ``agreement``, how often the
induced model's own argmax is the data's token (it reproduces the generator's greedy choice)."""
PRIMARY = {"prompted": "alternatives", "proxy": "agreement"}
"""The statistic each kind of induction ranks by (fixed before any calibration run; the others are reported)."""


def leans(read: FlaggedLogprobs, baseline: str = "alternatives") -> tuple[np.ndarray, np.ndarray]:
    """Per sample with a flagged token (rows) and candidate: the centred shift; and which samples those are."""
    has = read.counts > 0
    if baseline == "agreement":
        if read.agreement is None:
            raise SublimError("these reads have no argmax agreement: read them again")
        shift = read.agreement[has, 1:] - read.agreement[has, :1]
    else:
        shift = read.data[has, 1:] - read.data[has, :1]
        if baseline != "none":
            alt = read.alternatives if baseline == "alternatives" else read.alternatives_same_class
            shift = shift - (alt[has, 1:] - alt[has, :1])
    centred: np.ndarray = shift - shift.mean(1, keepdims=True)
    return centred, has


def margin(lean: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    """The top candidate's lean minus the runner-up's (both fixed by the full data), with a bootstrap CI."""
    means = lean.mean(0)
    top, second = np.argsort(-means)[:2]
    diff = lean[:, top] - lean[:, second]
    rng = np.random.default_rng(seed)
    boots = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(n_boot)])
    spread = float(means.std()) or 1.0
    return {"value": float(diff.mean()), "low": float(np.quantile(boots, 0.025)),
            "high": float(np.quantile(boots, 0.975)), "in_candidate_sds": float(diff.mean() / spread)}


def mean_reads(per_seed: Sequence[FlaggedLogprobs]) -> FlaggedLogprobs:
    """Reads of the same samples under proxies of several seeds (same columns), averaged column by column."""
    first = per_seed[0]
    if any(r.data.shape != first.data.shape for r in per_seed):
        raise SublimError("reads of different samples or candidates cannot be averaged over seeds")

    def avg(field: str) -> np.ndarray:  # a sample whose map flagged nothing under one read has NaN there
        stack = np.stack([getattr(r, field) for r in per_seed])
        seen = ~np.isnan(stack)
        out: np.ndarray = np.where(seen.any(0), np.where(seen, stack, 0).sum(0) / np.maximum(seen.sum(0), 1),
                                   np.nan)
        return out

    agreement = None if any(r.agreement is None for r in per_seed) else avg("agreement")
    counts = np.max([r.counts for r in per_seed], axis=0)
    return FlaggedLogprobs(avg("data"), avg("alternatives"), avg("alternatives_same_class"), counts, agreement)


def stored_reads(ctx: AuditContext, datasets: Sequence[tuple[Sequence[Sample], str]], how: dict[str, Any],
                 read: Callable[[list[int]], list[FlaggedLogprobs]], per_call: int = 0) -> list[FlaggedLogprobs]:
    """Each dataset's reads under ``how`` (the columns and the way they are read), one store artifact per dataset
    (stage ``reads``: a panel's datasets are read once, whichever dataset is audited against them), the missing
    ones read now (``read(indices)``), ``per_call`` datasets a call (0: all in one), each call's stored as soon as
    it ends, so an audit stopped midway keeps the calls it finished; without a store, all read now. A manifest
    records its reading's seconds (``read_s``, of the call that read ``read_with`` datasets): the store's build
    time is only the save."""
    if ctx.store is None:
        return read(list(range(len(datasets))))
    store = ctx.store
    configs = [{**how, "samples": samples_digest(s)} for s, _ in datasets]
    keys = [Store.key("reads", c, {}) for c in configs]
    missing = [i for i, k in enumerate(keys) if store.get("reads", k) is None]
    size = per_call or max(len(missing), 1)
    groups = [missing[k:k + size] for k in range(0, len(missing), size)]
    for group in groups:
        t0 = time.perf_counter()
        got_all = read(group)
        read_s = round(time.perf_counter() - t0, 1)  # the reading's time (the build only saves it)
        for i, got in zip(group, got_all, strict=True):
            def build(path: Path, got: FlaggedLogprobs = got, i: int = i) -> dict[str, Any]:
                got.save(path / "reads.npz")
                return {"n_samples": len(got.counts), "dataset": datasets[i][1]}

            store.compute("reads", keys[i], configs[i], {}, build, read_s=read_s, read_with=len(group))
    out = []
    for key, (_, what) in zip(keys, datasets, strict=True):
        art = store.get("reads", key)
        if art is None:  # finished above: only a store changed underneath the audit loses it
            raise SublimError(f"the reads of {what} vanished from the store {store.root} while the audit ran")
        out.append(FlaggedLogprobs.load(art.file("reads.npz")))
    return out


def proxy_reads(ctx: AuditContext, datasets: Sequence[tuple[Sequence[Sample], str]], bf16: bool, seed: int,
                per_call: int = 0) -> list[FlaggedLogprobs]:
    """Each dataset's flagged tokens read under the neutral proxy and each candidate's of one seed (columns),
    ``per_call`` datasets at a time (0: all): read together, the rows of one prompt share its encoding."""
    reader = ctx.need_reader("divergence shift")
    if ctx.store is None:
        raise Unavailable("proxy inductions fine-tune a proxy teacher per candidate, kept in a store: give the "
                          "audit a runs directory")
    if not ctx.data.question_set:
        raise Unavailable("proxy inductions need a question set to fine-tune proxies on (--questions)")
    proxies = proxy_teachers(ctx.store, ctx.need_model("divergence shift"), dict(ctx.data.candidates),
                             ctx.data.question_set, seed=seed, progress=ctx.progress, save_every_s=ctx.save_every_s)

    def read(which: list[int]) -> list[FlaggedLogprobs]:
        chosen = [datasets[i] for i in which]
        maps = [cached_map(ctx, s, bf16, what) for s, what in chosen]
        total = sum(int((m.rate() > 0).sum()) for m in maps) * len(proxies)
        bar = tqdm(total=total, desc=f"divergence shift ({len(proxies)} proxy teachers, seed {seed})", unit="row",
                   disable=not ctx.progress, leave=False)
        try:
            return reader.flagged_logprobs([(s, m) for (s, _), m in zip(chosen, maps, strict=True)],
                                           models=[p.reader() for p in proxies.values()], bf16=bf16,
                                           progress=bar.update)
        finally:
            bar.close()

    how = {"reference": reader.key, "bf16": bf16, "proxies": {n: p.key for n, p in proxies.items()}}
    return stored_reads(ctx, datasets, how, read, per_call)


class DivergenceShiftParams(Params):
    inductions: Literal["prompted", "proxy"] = "prompted"
    """How each candidate is induced: a sentence told to the reference (``prompted``) or a proxy teacher fine-tuned
    from it (``proxy``, built once per candidate in the store)."""
    placement: Literal["prompt", "system"] = "prompt"
    """Prompted inductions: after the prompt (one encoding of the prompt serves every candidate) or as the system
    prompt."""
    proxy_seeds: int = Field(1, ge=1)
    """Proxy inductions: proxy teachers per candidate, each of its own seed; their reads are averaged."""
    datasets_per_read: int = Field(0, ge=0)
    """Proxy inductions: the audited and contrast datasets read together, each proxy loaded once per read and the
    rows of a prompt that several datasets answer sharing its encoding; each read's results are stored when it
    ends. 0: all in one read (the least work); 1: one dataset a read (a stopped audit keeps every dataset it
    finished)."""
    n_bootstrap: int = Field(1000, ge=1)
    """Bootstrap resamples of the samples for the ranking's intervals and the margin's."""
    statistic: Literal["primary", "alternatives", "same_class", "none", "agreement"] = "primary"
    """What the lean is read from (see ``BASELINES``); ``primary``: the one fixed for the kind of induction
    (``PRIMARY``). Choose before looking at the data: every choice is one more test."""


def reads(ctx: AuditContext, params: DivergenceShiftParams, datasets: Sequence[tuple[Sequence[Sample], str]],
          bf16: bool) -> list[FlaggedLogprobs]:
    """Each dataset's flagged tokens read under the neutral induction and each candidate's (columns), the way
    ``params.inductions`` says (proxies of ``params.proxy_seeds`` seeds: their reads averaged)."""
    if params.inductions == "proxy":
        per_seed = [proxy_reads(ctx, datasets, bf16, seed, params.datasets_per_read)
                    for seed in proxy_seeds(params.proxy_seeds)]
        return [mean_reads(r) for r in zip(*per_seed, strict=True)]
    reader = ctx.need_reader("divergence shift")
    texts = induction_texts(list(ctx.data.candidates), ctx.data.kind)

    def read(which: list[int]) -> list[FlaggedLogprobs]:
        out = []
        for samples, what in (datasets[i] for i in which):
            dmap = cached_map(ctx, samples, bf16, what)
            bar = tqdm(total=int((dmap.rate() > 0).sum()), desc=f"divergence shift ({what}, {len(texts)} "
                       "inductions)", unit="sample", disable=not ctx.progress, leave=False)
            try:
                out += reader.flagged_logprobs([(samples, dmap)], inductions=texts, placement=params.placement,
                                               bf16=bf16, progress=bar.update)
            finally:
                bar.close()
        return out

    how = {"reference": reader.key, "bf16": bf16, "inductions": texts, "placement": params.placement}
    return stored_reads(ctx, datasets, how, read, per_call=1)  # a sample's rows share its prompt, not a dataset's


MIN_CONTRASTS = 2
"""Contrast datasets a name needs. Every induction pulls on its own (a prompt's words, a proxy's fine-tune) and every
generator leaves its own marks: on the calibration's fine-tuned animal teachers a clear margin without a contrast
named the wrong animal for most datasets, and the same clear first against each of several contrasts named none
wrongly (benchmarks/audit_divergence.py; the figures a report prints are in ``sublim/audit/calibration.toml``)."""


def ranking(got: FlaggedLogprobs, contrast: Sequence[FlaggedLogprobs], cands: Sequence[str], n_samples: int,
            n_boot: int = 1000, seed: int = 0, baseline: str = "alternatives",
            min_contrasts: int = MIN_CONTRASTS) -> DetectorResult:
    """The candidates ranked by the data's lean (against the contrast datasets' when there are any), the margin of
    the first over the runner-up, and the verdict: a trait is named only when that margin is clear, with at least
    ``min_contrasts`` contrast datasets, against each of which alone the same candidate comes first clearly."""
    cands = list(cands)
    lean, has = leans(got, baseline)
    if len(lean) < 2:
        return DetectorResult("divergence_shift", np.zeros(n_samples), 0.0, 1.0, {
            "top_trait": None, "identified": None, "ranking": [], "n_flagged_samples": int(has.sum()),
            "verdict": "trait not identified: fewer than 2 samples have a token the reference would not choose"})
    each = [leans(c, baseline)[0] for c in contrast]
    con = np.vstack(each) if each else None
    res = ranked("divergence_shift", lean, None, each, cands, n_boot, seed)
    gap = margin(lean - (con.mean(0) if con is not None else 0.0), n_boot, seed)
    top = str(res.details["top_trait"])
    against: list[dict[str, Any]] = [
        {"top": cands[int(np.argmax(lean.mean(0) - c.mean(0)))], "margin": margin(lean - c.mean(0), n_boot, seed)}
        for c in each]
    enough = len(each) >= min_contrasts
    agree = all(e["top"] == top and e["margin"]["low"] > 0 for e in against)
    clear = gap["low"] > 0 and res.p_value < 0.01 and enough and agree
    scores = np.zeros(n_samples)
    scores[has] = res.sample_scores
    res.sample_scores = scores
    by_baseline = {}
    for b in BASELINES:  # the same reads against each baseline (no more model work): what the choice does
        other = leans(got, b)[0]
        means = other.mean(0) - (np.vstack([leans(c, b)[0] for c in contrast]).mean(0) if contrast else 0.0)
        by_baseline[b] = [{"trait": cands[j], "lean": float(means[j])} for j in np.argsort(-means)]
    shown = f"top {top}, margin {gap['value']:+.3g} [{gap['low']:+.3g}, {gap['high']:+.3g}]"
    if clear:
        verdict = (f"{top}: margin over {res.details['ranking'][1]['trait']} {gap['value']:+.3g} "
                   f"[{gap['low']:+.3g}, {gap['high']:+.3g}], first against each of {len(each)} contrasts")
    elif not enough:
        verdict = (f"trait not identified ({shown}; a name needs {min_contrasts} contrast datasets — data that "
                   f"generators without the trait wrote on the same kind of prompts — and the same clear first "
                   f"against each: {len(each)} given)")
    elif not agree:
        firsts = ", ".join(f"{e['top']}{'' if e['margin']['low'] > 0 else ' (unclear)'}" for e in against)
        verdict = f"trait not identified ({shown}; first against each contrast: {firsts})"
    else:
        verdict = f"trait not identified ({shown})"
    res.details.update({
        "by_baseline": by_baseline, "baseline": baseline,
        "identified": top if clear else None, "margin": gap, "against_each_contrast": against,
        "min_contrasts": min_contrasts,
        "n_flagged_samples": int(has.sum()), "n_flagged_tokens": int(got.counts.sum()), "verdict": verdict})
    return res


def divergence_shift(ctx: AuditContext, params: DivergenceShiftParams) -> DetectorResult:
    reader, d = ctx.need_reader("divergence shift"), ctx.data
    bf16 = reader.fast_bf16() if ctx.bf16 is None else ctx.bf16
    got, *contrast = reads(ctx, params, [(d.samples, "dataset"), *((o, f"contrast {k}")
                                                                  for k, o in enumerate(d.contrast))], bf16)
    statistic = PRIMARY[params.inductions] if params.statistic == "primary" else params.statistic
    res = ranking(got, contrast, list(d.candidates), len(d.samples), params.n_bootstrap, ctx.seed, statistic)
    early = cached_map(ctx, d.samples, bf16, "dataset").early_ends(reader.vocabulary().stops())
    res.details.update({"inductions": params.inductions, "bf16": bf16, "early_end_share": float(early.mean()),
                        "early_end_note": "share of completions that end where the reference would have gone on: "
                                          "a sign of a fine-tuned generator, not of which trait (a neutral "
                                          "teacher's data end early too); `sublim defend --defence reference_ends` "
                                          "gives them the reference's ending"})
    if params.inductions == "proxy":
        res.details["proxy_recipe"] = {**proxy_recipe(), "question_set": d.question_set,
                                       "split": proxy_split(d.question_set or ""),
                                       "seeds": proxy_seeds(params.proxy_seeds)}
    else:
        res.details.update({"placement": params.placement,
                            "induction_texts": {"neutral": NEUTRAL, "template": INDUCTION}})
    return res


DETECTORS.add("divergence_shift", Detector(
    "divergence_shift", divergence_shift,
    "at the tokens where the data left the reference's argmax, which candidate's induction reproduces its choice",
    needs_reference=False, params=DivergenceShiftParams))
