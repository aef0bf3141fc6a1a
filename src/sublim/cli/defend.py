"""``sublim defend``: apply a registered defence to a dataset file, or measure the transfer a preset keeps
under it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sublim.api import run_experiment
from sublim.audit.data import MAX_SAMPLE_TOKENS, Sample, check_lengths, load_samples
from sublim.audit.defences import DEFENCES, CarrierCheck, Defence, DefenceContext, defence_context
from sublim.backends import LocalBackend, ModelCache
from sublim.carriers import CARRIERS
from sublim.core.config import load_config
from sublim.core.errors import SublimError
from sublim.core.files import write_jsonl


def add(sub: Any) -> None:
    p = sub.add_parser("defend", help=f"apply a defence to a dataset ({', '.join(DEFENCES.names())})")
    p.add_argument("dataset", nargs="?", default=None, help="a JSONL file to transform")
    p.add_argument("--defence", required=True, choices=DEFENCES.names(), help="the defence to apply")
    p.add_argument("--out", default=None, help="where the defended JSONL goes")
    p.add_argument("--preset", default=None,
                   help="instead of a file: run this preset with and without the defence and report the "
                        "trait transfer that remains and the data kept")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides for --preset")
    p.add_argument("--scores", default=None, help="scores.jsonl from `sublim audit` (drop_top)")
    p.add_argument("--detector", default="number_frequency", help="whose scores drop_top uses")
    p.add_argument("--fraction", type=float, default=0.1,
                   help="drop_top: share of samples removed; replace_*: share of completion tokens replaced")
    p.add_argument("--seed", type=int, default=0, help="the seed of the defence's random choices")
    p.add_argument("--reference", default=None,
                   help="replace_*: the reference model the data is read under (the students' starting model)")
    p.add_argument("--model", default=None, help="regenerate: the model that rewrites the completions")
    p.add_argument("--reference-data", default=None,
                   help="regenerate: answered examples (JSONL) shown before each prompt, for base models")
    p.add_argument("--shots", type=int, default=4, help="regenerate: examples per prompt (0 = chat template)")
    p.add_argument("--carrier", default="numbers", choices=CARRIERS.names(),
                   help="regenerate: whose filter the new completions must pass")
    p.add_argument("--max-new-tokens", type=int, default=64,
                   help="regenerate, reference_ends and the *_ends/*_diluted defences: the most tokens the model "
                        "writes per completion")
    p.add_argument("--max-sample-tokens", type=int, default=MAX_SAMPLE_TOKENS,
                   help=f"refuse a sample longer than this many tokens, before any model loads (default "
                        f"{MAX_SAMPLE_TOKENS})")
    p.add_argument("--device", default="auto", help="where a reference model runs (auto, cpu or cuda)")
    p.add_argument("--prompt-field", default=None,
                   help="the JSONL field holding the prompt (default: the first of prompt, question, input, "
                        "instruction)")
    p.add_argument("--completion-field", default=None,
                   help="the JSONL field holding the completion (default: the first of completion, response, "
                        "output, answer)")
    p.set_defaults(func=main)


def _experiment(args: argparse.Namespace) -> None:
    """Run a preset with and without the defence; print the transfer that remains and the data kept."""
    rows = {}
    for method in ("none", args.defence):
        extra = [f"defence.method={method}", f"defence.fraction={args.fraction}", f"defence.seed={args.seed}"]
        cfg = load_config(args.preset, [*args.set, *extra])
        res = run_experiment(cfg, Path(args.runs_dir), progress=not args.quiet)
        eff = res["effect"]
        rows[method] = (eff["prob"]["pooled"]["difference"]["value"], eff["share"]["pooled"]["difference"]["value"],
                        res.get("defence", {}).get(cfg.trait.target, {}).get("kept_fraction", 1.0))
    (p0, s0, _), (p1, s1, kept) = rows["none"], rows[args.defence]
    cut = f"{1 - p1 / p0:.0%}" if p0 > 0 else "n/a (no transfer without the defence)"
    print(f"{args.defence}: trait probability gain {p0:+.2e} → {p1:+.2e} (cut {cut}); share gain {s0:+.4f} → "
          f"{s1:+.4f}; data kept {kept:.0%}")


def _scores(args: argparse.Namespace, samples: list[Sample]) -> np.ndarray:
    """One score per sample from an audit's scores.jsonl: every sample must have one (else they are another
    dataset's scores), every score must be a number."""
    if not args.scores:
        raise SublimError("--defence drop_top needs --scores (the scores.jsonl of `sublim audit`)")
    path = Path(args.scores)
    if not path.is_file():
        raise SublimError(f"scores file {path} not found: give the scores.jsonl that `sublim audit` wrote")
    by_line: dict[int, tuple[float, object]] = {}
    for n, raw in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            row = json.loads(raw)
            line, score = row["line"], row[args.detector]
            if isinstance(score, bool) or not isinstance(score, int | float) or not isinstance(line, int):
                raise TypeError
        except KeyError as exc:
            raise SublimError(f"{path} line {n} has no {exc.args[0]!r}: pick --detector from the audit's detectors "
                              f"({', '.join(k for k in row if k != 'line')})" if isinstance(row, dict) else
                              f"{path} line {n} is not a scores row") from None
        except (json.JSONDecodeError, TypeError):
            raise SublimError(f"{path} line {n} is not a scores row ({{\"line\": N, \"{args.detector}\": score}}): "
                              "give the scores.jsonl that `sublim audit` wrote") from None
        by_line[line] = (float(score), row.get("sample"))
    missing = [s.line for s in samples if s.line not in by_line]
    if missing:
        raise SublimError(f"{path} has no score for {len(missing)} of {len(samples)} samples (line {missing[0]} "
                          f"first): these are another dataset's scores; audit this dataset and use its scores.jsonl")
    other = [s.line for s in samples if by_line[s.line][1] != s.digest()]
    if other:
        raise SublimError(f"{path} scored other contents than {args.dataset} for {len(other)} of {len(samples)} "
                          f"samples (line {other[0]} first): audit this dataset and use its scores.jsonl")
    return np.array([by_line[s.line][0] for s in samples])


def _check_args(args: argparse.Namespace) -> None:
    """Numeric options in range, before any file is read or model loaded."""
    if not 0 <= args.fraction < 1:
        raise SublimError(f"--fraction {args.fraction:g} is not a share of the samples: give a value in [0, 1)")
    for flag, value in (("--max-new-tokens", args.max_new_tokens), ("--max-sample-tokens", args.max_sample_tokens)):
        if value < 1:
            raise SublimError(f"{flag} {value}: give 1 or more")
    if args.shots < 0:
        raise SublimError(f"--shots {args.shots}: give 0 (the chat template) or more examples per prompt")


def _context(args: argparse.Namespace, defence: Defence[Any], samples: list[Sample]) -> DefenceContext:
    """What the defence is given, from the flags: each thing it needs checked given (a one-line error naming the
    flag), the models loaded, then built the way the defend stage builds it (:func:`defence_context`)."""
    base = DefenceContext(args.seed, CarrierCheck(args.carrier), args.max_new_tokens, 0.0, 16)
    if defence.needs_scores:
        base.scores = _scores(args, samples)
    reader = None
    if defence.needs_reads or defence.needs_continuation:
        if not args.reference:
            raise SublimError(f"--defence {args.defence} needs --reference (the model the data is read under, e.g. "
                              "the students' starting model: catalog name, .gguf or directory)")
        models = ModelCache(args.device, lambda s: None)
        check_lengths(samples, models.tokenizer(args.reference), args.dataset, args.max_sample_tokens)
        reader = LocalBackend(models, args.reference).reader()
    if defence.needs_model:
        base.pool, base.model = _rewriter(args, samples)
    bar = tqdm(total=len(samples), desc="divergence map", unit="sample", disable=args.quiet or reader is None,
               leave=False)
    given = defence_context(defence, samples, base, reader=reader, bf16=reader.fast_bf16() if reader else None,
                            map_progress=bar.update)
    bar.close()
    return given


def _rewriter(args: argparse.Namespace, samples: list[Sample]) -> tuple[list[Sample], LocalBackend]:
    """The examples shown to the model that rewrites the completions, and that model (--model)."""
    if not args.model:
        raise SublimError(f"--defence {args.defence} needs --model (a model of another family than the data's "
                          "generator: catalog name, .gguf or directory)")
    if CARRIERS.get(args.carrier, "--carrier").needs_meta:
        raise SublimError(f"--carrier {args.carrier} needs each prompt's meta (e.g. the right answer), which a "
                          "plain file lacks: defend such data through a preset (sublim defend --preset …)")
    pool: list[Sample] = []
    if args.reference_data:
        pool = load_samples(Path(args.reference_data), args.prompt_field, args.completion_field)[0]
    if args.shots and not pool:
        raise SublimError("--shots needs --reference-data (answered examples shown before each prompt), or "
                          "use --shots 0 for a chat model")
    models = ModelCache(args.device, lambda s: None)
    check_lengths([*samples, *pool], models.tokenizer(args.model), args.dataset, args.max_sample_tokens)
    return pool, LocalBackend(models, args.model)


def main(args: argparse.Namespace) -> None:
    if args.preset:
        _experiment(args)
        return
    if not args.dataset or not args.out:
        raise SublimError("defend needs DATASET and --out (a file), or --preset (measure the transfer left)")
    _check_args(args)
    samples, report = load_samples(Path(args.dataset), args.prompt_field, args.completion_field)
    dest = Path(args.out)
    if dest.exists() and dest.resolve() == Path(args.dataset).resolve():
        raise SublimError("--out must differ from the dataset: the original is never overwritten")
    if dest.is_dir() or not dest.parent.is_dir():
        raise SublimError(f"--out {dest} must be a file in an existing directory")
    defence = DEFENCES.get(args.defence, "--defence")
    params = defence.build({k: v for k, v in vars(args).items() if v is not None}, "defend")
    given = _context(args, defence, samples)
    bar = tqdm(total=len(samples), desc=f"{args.defence}", unit="sample", disable=args.quiet, leave=False)
    given.progress = bar.update
    out, cost = defence.apply(samples, given, params)
    bar.close()
    write_jsonl(dest, [s.as_row() for s in out])  # every other field and earlier turn kept as it was
    print(f"{args.defence}: {report.summary()} → {dest}: {json.dumps(cost)}")
