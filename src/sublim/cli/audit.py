"""``sublim audit``: look for a hidden trait in a dataset, against a reference model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sublim.api import run_audit
from sublim.audit.config import AuditConfig, load_audit_config
from sublim.audit.data import MAX_SAMPLE_TOKENS
from sublim.audit.detectors import DETECTORS
from sublim.core.store import Store


def add(sub: Any) -> None:
    p = sub.add_parser("audit", help="look for a hidden trait in a dataset, against a reference model")
    p.add_argument("dataset", nargs="?", default=None,
                   help="JSONL with prompt/completion (or chat messages) per line (or dataset = in --config)")
    p.add_argument("--config", default=None, metavar="FILE.toml",
                   help="the audit config as TOML (the keys of sublim.audit.config.AuditConfig, each detector's "
                        "parameters in a [detector.<name>] table); flags given here override it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. detector.divergence_shift.proxy_seeds=3")
    p.add_argument("--reference", default=None, help="the reference model (catalog name, .gguf, directory)")
    p.add_argument("--reference-data", default=None,
                   help="the reference model's answers to the same prompts (default: generated now)")
    p.add_argument("--teacher", default=None, help="a suspected teacher model, for the likelihood ratio")
    p.add_argument("--category", default=None, help="candidate traits: animals (default), trees or a TOML file")
    p.add_argument("--detectors", default=None,
                   help=f"comma-separated subset of {', '.join(DETECTORS.names())} (default: all but student_probe, "
                        "which trains a student per dataset)")
    p.add_argument("--max-samples", type=int, default=None, help="at most this many samples per dataset (1000)")
    p.add_argument("--seed", type=int, default=None, help="the subsets drawn and every detector's resampling (0)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="where the models run (auto)")
    p.add_argument("--prompt-field", default=None,
                   help="the JSONL field holding the prompt (default: the first of prompt, question, input, "
                        "instruction)")
    p.add_argument("--completion-field", default=None,
                   help="the JSONL field holding the completion (default: the first of completion, response, "
                        "output, answer)")
    p.add_argument("--judge-url", default=None, help="an OpenAI-compatible endpoint for the llm_judge detector")
    p.add_argument("--judge-model", default=None, help="the judge endpoint's model (default: 'default')")
    p.add_argument("--judge-key-env", default=None,
                   help="environment variable holding its key (default: OPENAI_API_KEY)")
    p.add_argument("--contrast", action="append", default=None, metavar="DATASET",
                   help="a dataset from another generator, same kind of prompts (repeatable): rank the "
                        "trait rankings against these rather than against the reference answers")
    p.add_argument("--candidates", default=None, metavar="A,B",
                   help="comma-separated candidates for the targeted tests against the --contrast panel (does the "
                        "dataset lean toward each more than the panel does?); default: every candidate of the "
                        "category")
    p.add_argument("--questions", default=None,
                   help="question set for gradient_alignment (default: the category's, e.g. 'animal')")
    p.add_argument("--placement", default=None, choices=["prompt", "system"],
                   help="divergence_shift: each candidate's induction after the prompt (default; fast: the prompt "
                        "is encoded once for all) or as the system prompt")
    p.add_argument("--inductions", default=None, choices=["prompted", "proxy"],
                   help="divergence_shift: induce each candidate with a sentence (prompted, default), or with a "
                        "proxy teacher fine-tuned from the reference (proxy: built once per candidate in the runs "
                        "directory, about a teacher's training each)")
    p.add_argument("--proxy-seeds", type=int, default=None, metavar="N",
                   help="divergence_shift with proxy inductions: N proxy teachers per candidate (default 1), each "
                        "of its own seed, their reads averaged (one fine-tune's own marks weigh 1/N; N times the work)")
    p.add_argument("--float32", action="store_true",
                   help="score in float32 throughout (default: the body in bf16 where that is fast here)")
    p.add_argument("--max-sample-tokens", type=int, default=None,
                   help=f"refuse a sample longer than this many tokens, before any model loads (default "
                        f"{MAX_SAMPLE_TOKENS})")
    p.add_argument("--out", default=None, help="output directory (default: runs/audits/<name>)")
    p.add_argument("--fail-on", default=None, choices=["suspect", "named", "targeted"],
                   help="exit 1 when the verdict is SUSPECT (suspect: a detector flags the data, Holm-corrected "
                        "across detectors), names a trait (named), or a candidate stands out against the "
                        "--contrast panel (targeted), as a gate in a data pipeline")
    p.set_defaults(func=main)


TOP_LEVEL = {"dataset": "dataset", "reference": "reference", "reference_data": "reference_data",
             "category": "category", "max_samples": "max_samples", "seed": "seed", "device": "device",
             "prompt_field": "prompt_field", "completion_field": "completion_field", "contrast": "contrasts",
             "questions": "questions", "max_sample_tokens": "max_sample_tokens"}
"""Flag (argparse name) → audit config key, for the flags that set a top-level key."""
DIVERGENCE_SHIFT = ("placement", "inductions", "proxy_seeds")


def flags(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the flags given set (a flag left out leaves the config file's value, or the default)."""
    out: dict[str, Any] = {key: getattr(args, flag) for flag, key in TOP_LEVEL.items()
                           if getattr(args, flag) is not None}
    if args.candidates is not None:
        out["candidates"] = [c.strip() for c in args.candidates.split(",") if c.strip()]
    if args.detectors is not None:
        out["detectors"] = [d.strip() for d in args.detectors.split(",") if d.strip()]
    if args.float32:
        out["bf16"] = False
    tables: dict[str, dict[str, Any]] = {}
    if args.teacher is not None:
        tables["likelihood_ratio"] = {"teacher": args.teacher}
    if args.judge_url is not None:
        endpoint = {"base_url": args.judge_url, "model": args.judge_model or "default",
                    "api_key_env": args.judge_key_env or "OPENAI_API_KEY"}
        tables["llm_judge"] = {"endpoint": endpoint}
    ds = {k: getattr(args, k) for k in DIVERGENCE_SHIFT if getattr(args, k) is not None}
    if ds:
        tables["divergence_shift"] = ds
    if tables:
        out["detector"] = tables
    return out


def audit_config(args: argparse.Namespace) -> AuditConfig:
    """The audit config: ``--config`` (if given), the flags over it, then ``--set`` overrides."""
    return load_audit_config(args.config, flags(args), args.set)


def main(args: argparse.Namespace) -> int:
    config = audit_config(args)
    out = Path(args.out) if args.out else Path(args.runs_dir) / "audits" / Path(config.dataset).stem
    res = run_audit(config, out, progress=not args.quiet, store=Store(Path(args.runs_dir)))
    print(f"report: {out / 'report.md'}")
    failed = {"suspect": bool(res["flagged"]), "named": res["identified"] is not None,
              "targeted": bool((res["targeted"] or {}).get("stands_out"))}.get(args.fail_on or "", False)
    if failed:
        print(f"failing (--fail-on {args.fail_on}): {res['verdict']}")
    return 1 if failed else 0
