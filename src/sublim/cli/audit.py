"""``sublim audit``: look for a hidden trait in a dataset, against a reference model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sublim.api import run_audit
from sublim.audit.data import MAX_SAMPLE_TOKENS
from sublim.audit.detectors import DETECTORS
from sublim.core.config import EndpointConfig
from sublim.core.store import Store


def add(sub: Any) -> None:
    p = sub.add_parser("audit", help="look for a hidden trait in a dataset, against a reference model")
    p.add_argument("dataset", help="JSONL with prompt/completion (or chat messages) per line")
    p.add_argument("--reference", required=True, help="the reference model (catalog name, .gguf, directory)")
    p.add_argument("--reference-data", default=None,
                   help="the reference model's answers to the same prompts (default: generated now)")
    p.add_argument("--teacher", default=None, help="a suspected teacher model, for the likelihood ratio")
    p.add_argument("--category", default="animals", help="candidate traits: animals, trees or a TOML file")
    p.add_argument("--detectors", default=None,
                   help=f"comma-separated subset of {', '.join(DETECTORS.names())} (default: all)")
    p.add_argument("--max-samples", type=int, default=1000)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--prompt-field", default=None)
    p.add_argument("--completion-field", default=None)
    p.add_argument("--judge-url", default=None, help="an OpenAI-compatible endpoint for the llm_judge detector")
    p.add_argument("--judge-model", default="default")
    p.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding its key")
    p.add_argument("--contrast", action="append", default=[], metavar="DATASET",
                   help="a dataset from another generator, same kind of prompts (repeatable): rank the "
                        "trait rankings against these rather than against the reference answers")
    p.add_argument("--questions", default=None,
                   help="question set for gradient_alignment (default: the category's, e.g. 'animal')")
    p.add_argument("--placement", default="prompt", choices=["prompt", "system"],
                   help="divergence_shift: each candidate's induction after the prompt (fast: the prompt is "
                        "encoded once for all) or as the system prompt")
    p.add_argument("--inductions", default="prompted", choices=["prompted", "proxy"],
                   help="divergence_shift: induce each candidate with a sentence (prompted), or with a proxy "
                        "teacher fine-tuned from the reference (proxy: built once per candidate in the runs "
                        "directory, about a teacher's training each)")
    p.add_argument("--proxy-seeds", type=int, default=1, metavar="N",
                   help="divergence_shift with proxy inductions: N proxy teachers per candidate, each of its own "
                        "seed, their reads averaged (one fine-tune's own marks weigh 1/N; N times the work)")
    p.add_argument("--float32", action="store_true",
                   help="score in float32 throughout (default: the body in bf16 where that is fast here)")
    p.add_argument("--max-sample-tokens", type=int, default=MAX_SAMPLE_TOKENS,
                   help=f"refuse a sample longer than this many tokens, before any model loads (default "
                        f"{MAX_SAMPLE_TOKENS})")
    p.add_argument("--out", default=None, help="output directory (default: runs/audits/<name>)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> None:
    out = Path(args.out) if args.out else Path(args.runs_dir) / "audits" / Path(args.dataset).stem
    judge = EndpointConfig(base_url=args.judge_url, model=args.judge_model, api_key_env=args.judge_key_env) \
        if args.judge_url else None
    run_audit(Path(args.dataset), args.reference, out,
              reference_data=Path(args.reference_data) if args.reference_data else None, teacher=args.teacher,
              category=args.category, detectors=args.detectors.split(",") if args.detectors else None,
              max_samples=args.max_samples, device=args.device, prompt_field=args.prompt_field,
              completion_field=args.completion_field, judge=judge, contrast=[Path(c) for c in args.contrast],
              questions=args.questions, progress=not args.quiet, store=Store(Path(args.runs_dir)),
              placement=args.placement, bf16=False if args.float32 else None, inductions=args.inductions,
              proxy_seeds=args.proxy_seeds, max_sample_tokens=args.max_sample_tokens)
    print(f"report: {out / 'report.md'}")
