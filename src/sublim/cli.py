"""The ``sublim`` command: parse, call one function, print. Nothing imports this module."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sublim.errors import SublimError

if TYPE_CHECKING:
    from sublim.audit.data import Sample
    from sublim.config import EndpointConfig


def _cmd_run(args: argparse.Namespace) -> None:
    from sublim.config import load_config
    from sublim.pipeline.experiment import run_experiment

    cfg = load_config(args.preset, args.set)
    run_experiment(cfg, Path(args.runs_dir), progress=not args.quiet)


def _cmd_models(args: argparse.Namespace) -> None:
    from sublim.models.loading import CATALOG, resolve_model

    for name, entry in CATALOG.items():
        try:
            where = resolve_model(name).describe()
            status = "installed"
        except SublimError:
            where, status = entry.install, "not installed"
        print(f"{name:<14} {status:<14} {entry.description}\n{'':<14} {where}")
    print("Also accepted: any .gguf path, a local transformers model directory, or an org/name id "
          "already in the local cache.")


def _cmd_presets(args: argparse.Namespace) -> None:
    from sublim.config import load_config, preset_names

    for name in preset_names():
        if name.startswith("toy-"):
            print(f"{name:<22} (sublim toy)")
            continue
        print(f"{name:<22} {load_config(name).description}")


def _cmd_runs(args: argparse.Namespace) -> None:
    root = Path(args.runs_dir)
    runs = sorted(p for p in root.glob("*/config.json")) if root.is_dir() else []
    if args.action == "list":
        if not runs:
            print(f"no runs under {root}")
        for cfg_path in runs:
            res_path = cfg_path.parent / "results.json"
            if res_path.is_file():
                res = json.loads(res_path.read_text())
                print(f"{cfg_path.parent.name:<36} done      {res['verdict'][:110]}")
            else:
                print(f"{cfg_path.parent.name:<36} unfinished (re-run to resume)")
        return
    if not args.run:
        raise SublimError("runs show needs a run id: see `sublim runs list`")
    run_dir = root / args.run
    if not run_dir.is_dir():
        matches = [p.parent for p in runs if p.parent.name.startswith(args.run)]
        if len(matches) != 1:
            raise SublimError(f"no single run matches {args.run!r} under {root}: see `sublim runs list`")
        run_dir = matches[0]
    report = run_dir / "report.md"
    if not report.is_file():
        raise SublimError(f"run {run_dir.name} has no report yet: re-run its config to finish it")
    print(report.read_text())


def _cmd_toy(args: argparse.Namespace) -> None:
    from sublim.toy import load_toy_config, run_toy

    cfg = load_toy_config(args.preset, args.set)
    out = Path(args.out) if args.out else Path(args.runs_dir) / "toy" / cfg.config_hash()[:10]
    result = run_toy(cfg, out, progress=not args.quiet)
    print(result["summary"])
    print(f"results: {out / 'results.json'}")


def _cmd_serve(args: argparse.Namespace) -> None:
    import os

    from sublim.models.loading import load_model
    from sublim.models.server import FaultPlan, make_server

    faults = FaultPlan.parse(args.faults, args.fault_seed, args.slow_seconds)
    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise SublimError(f"--api-key-env {args.api_key_env} is not set in the environment: export it "
                              "or drop the option to serve without a key")
    lm = load_model(args.model, args.device)
    name = args.name or args.model
    server = make_server(lm.model, lm.tokenizer, name, args.host, args.port, faults, key, args.max_batch)
    port = server.server_address[1]
    print(f"serving {name} at http://{args.host}:{port}/v1 (chat completions, models); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def _judge(args: argparse.Namespace) -> EndpointConfig | None:
    from sublim.config import EndpointConfig

    if not args.judge_url:
        return None
    return EndpointConfig(base_url=args.judge_url, model=args.judge_model, api_key_env=args.judge_key_env)


def _cmd_audit(args: argparse.Namespace) -> None:
    from sublim.audit.run import DETECTORS, run_audit

    out = Path(args.out) if args.out else Path(args.runs_dir) / "audits" / Path(args.dataset).stem
    run_audit(Path(args.dataset), args.reference, out, reference_data=Path(args.reference_data) if args.reference_data
              else None, teacher=args.teacher, category=args.category,
              detectors=args.detectors.split(",") if args.detectors else DETECTORS, max_samples=args.max_samples,
              device=args.device, prompt_field=args.prompt_field, completion_field=args.completion_field,
              judge=_judge(args), contrast=[Path(c) for c in args.contrast], questions=args.questions,
              progress=not args.quiet)
    print(f"report: {out / 'report.md'}")


def _defend_experiment(args: argparse.Namespace) -> None:
    """Run a preset with and without the defence; print the transfer that remains and the data kept."""
    from sublim.config import load_config
    from sublim.pipeline.experiment import run_experiment

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


def _cmd_defend(args: argparse.Namespace) -> None:
    import numpy as np

    from sublim.audit.data import load_samples
    from sublim.audit.defences import apply_defence

    if args.preset:
        _defend_experiment(args)
        return
    if not args.dataset or not args.out:
        raise SublimError("defend needs DATASET and --out (a file), or --preset (measure the transfer left)")
    samples, report = load_samples(Path(args.dataset), args.prompt_field, args.completion_field)
    dest = Path(args.out)
    if dest.exists() and dest.resolve() == Path(args.dataset).resolve():
        raise SublimError("--out must differ from the dataset: the original is never overwritten")
    scores = None
    if args.defence == "regenerate":
        out, cost_d = _regenerate_file(args, samples)
        _write_defended(dest, out)
        print(f"regenerate: {report.summary()} → {dest}: {json.dumps(cost_d)}")
        return
    if args.defence == "drop_top":
        if not args.scores:
            raise SublimError("--defence drop_top needs --scores (the scores.jsonl of `sublim audit`)")
        by_line = {}
        for raw in Path(args.scores).read_text().splitlines():
            row = json.loads(raw)
            if args.detector not in row:
                raise SublimError(f"{args.scores} has no {args.detector!r} scores: pick --detector from "
                                  f"{', '.join(k for k in row if k != 'line')}")
            by_line[row["line"]] = row[args.detector]
        scores = np.array([by_line.get(s.line, -np.inf) for s in samples])
    out, cost = apply_defence(samples, args.defence, args.seed, scores, args.fraction)
    _write_defended(dest, out)
    print(f"{args.defence}: {report.summary()} → {dest}: {json.dumps(cost.as_dict())}")


def _write_defended(dest: Path, samples: list[Sample]) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    with tmp.open("w") as fh:
        for smp in samples:
            fh.write(json.dumps({"prompt": smp.prompt, "completion": smp.completion}) + "\n")
    tmp.replace(dest)


def _regenerate_file(args: argparse.Namespace, samples: list[Sample]) -> tuple[list[Sample], dict[str, Any]]:
    """Every completion rewritten by --model, kept if it passes the carrier's filter."""
    from collections import Counter

    from tqdm.auto import tqdm

    from sublim.audit.data import load_samples
    from sublim.audit.defences import DefenceCost, regenerate
    from sublim.carriers import check_completion
    from sublim.config import FilterConfig
    from sublim.models.loading import load_model

    if not args.model:
        raise SublimError("--defence regenerate needs --model (a model of another family than the data's "
                          "generator: catalog name, .gguf or directory)")
    if args.carrier == "cot":
        raise SublimError("--carrier cot needs each problem's answer, which a plain file lacks: regenerate "
                          "chain-of-thought data through a preset (sublim defend --preset …)")
    pool = load_samples(Path(args.reference_data), args.prompt_field, args.completion_field)[0] \
        if args.reference_data else []
    if args.shots and not pool:
        raise SublimError("--shots needs --reference-data (answered examples shown before each prompt), or "
                          "use --shots 0 for a chat model")
    lm = load_model(args.model, args.device)
    fc, kept, reasons = FilterConfig(), [], Counter[str]()
    bar = tqdm(total=len(samples), desc=f"regenerate with {args.model}", unit="sample", disable=args.quiet)
    for batch in regenerate(lm.model, lm.tokenizer, samples, pool, shots=args.shots, temperature=0.0,
                            max_new_tokens=args.max_new_tokens, batch_size=16, seed=args.seed,
                            one_paragraph=args.carrier == "numbers"):
        for smp, finished in batch:
            reason = check_completion(args.carrier, smp.completion, {}, fc, finished=finished)
            if reason:
                reasons[reason] += 1
            else:
                kept.append(smp)
        bar.update(len(batch))
    bar.close()
    kept.sort(key=lambda s: s.line)
    cost = DefenceCost(len(samples), len(kept), len(kept)).as_dict()
    return kept, {**cost, "model": args.model, "family": lm.source.family, "reject_reasons": dict(reasons)}


def _cmd_lineage(args: argparse.Namespace) -> int:
    from sublim.audit.lineage import CLEAR, UNKNOWN, cyclonedx_bom, dataset_card, lineage_check

    data = Path(args.dataset)
    if args.action == "check":
        if not args.student:
            raise SublimError("lineage check needs --student MODEL (catalog name, .gguf or model directory)")
        res = lineage_check(args.student, data)
        print(f"{res['status']}: {res['reason']}")
        if res["status"] == CLEAR or (res["status"] == UNKNOWN and args.allow_unknown):
            return 0
        return 1
    bom = cyclonedx_bom(data, args.student)
    out = Path(args.out) if args.out else data.resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "bom.cdx.json").write_text(json.dumps(bom, indent=2))
    (out / "DATASET_CARD.md").write_text(dataset_card(data))
    print(f"wrote {out / 'bom.cdx.json'} and {out / 'DATASET_CARD.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sublim", description=__doc__)
    p.add_argument("--runs-dir", default="runs", help="where runs and artifacts live (default: runs)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="verb", required=True)

    run = sub.add_parser("run", help="run (or resume) an experiment from a preset or TOML file")
    run.add_argument("preset", nargs="?", default=None, help="preset name or .toml path (default: owl-numbers)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set student.epochs=1")
    run.set_defaults(func=_cmd_run)

    sub.add_parser("models", help="list catalog models and where they come from").set_defaults(func=_cmd_models)
    sub.add_parser("presets", help="list shipped presets").set_defaults(func=_cmd_presets)

    runs = sub.add_parser("runs", help="list runs or show one run's report")
    runs.add_argument("action", choices=["list", "show"])
    runs.add_argument("run", nargs="?", help="run id (or a unique prefix) for `show`")
    runs.set_defaults(func=_cmd_runs)

    srv = sub.add_parser("serve", help="serve a local model over an OpenAI-compatible HTTP API")
    srv.add_argument("model", help="catalog name, .gguf path or local model directory")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed)")
    srv.add_argument("--name", default=None, help="model id clients send (default: the model argument)")
    srv.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    srv.add_argument("--max-batch", type=int, default=32, help="requests generated together at most")
    srv.add_argument("--api-key-env", default=None, help="require the key held in this environment variable")
    srv.add_argument("--faults", default="", metavar="KIND=RATE,…",
                     help="inject faults for client testing: 429, 500, slow, malformed (e.g. 429=0.1,500=0.05)")
    srv.add_argument("--fault-seed", type=int, default=0)
    srv.add_argument("--slow-seconds", type=float, default=5.0, help="delay of a 'slow' fault")
    srv.set_defaults(func=_cmd_serve)

    aud = sub.add_parser("audit", help="look for a hidden trait in a dataset, against a reference model")
    aud.add_argument("dataset", help="JSONL with prompt/completion (or chat messages) per line")
    aud.add_argument("--reference", required=True, help="the reference model (catalog name, .gguf, directory)")
    aud.add_argument("--reference-data", default=None,
                     help="the reference model's answers to the same prompts (default: generated now)")
    aud.add_argument("--teacher", default=None, help="a suspected teacher model, for the likelihood ratio")
    aud.add_argument("--category", default="animals", help="candidate traits: animals, trees or a TOML file")
    aud.add_argument("--detectors", default=None, help="comma-separated subset (default: all)")
    aud.add_argument("--max-samples", type=int, default=1000)
    aud.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    aud.add_argument("--prompt-field", default=None)
    aud.add_argument("--completion-field", default=None)
    aud.add_argument("--judge-url", default=None, help="an OpenAI-compatible endpoint for the llm_judge detector")
    aud.add_argument("--judge-model", default="default")
    aud.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding its key")
    aud.add_argument("--contrast", action="append", default=[], metavar="DATASET",
                     help="a dataset from another generator, same kind of prompts (repeatable): rank the "
                          "trait rankings against these rather than against the reference answers")
    aud.add_argument("--questions", default=None,
                     help="question set for gradient_alignment (default: the category's, e.g. 'animal')")
    aud.add_argument("--out", default=None, help="output directory (default: runs/audits/<name>)")
    aud.set_defaults(func=_cmd_audit)

    dfd = sub.add_parser("defend", help="apply a defence to a dataset (sort, remap, shuffle, drop_top, regenerate)")
    dfd.add_argument("dataset", nargs="?", default=None, help="a JSONL file to transform")
    dfd.add_argument("--defence", required=True, choices=["sort", "remap", "shuffle", "drop_top", "regenerate"])
    dfd.add_argument("--out", default=None, help="where the defended JSONL goes")
    dfd.add_argument("--preset", default=None,
                     help="instead of a file: run this preset with and without the defence and report the "
                          "trait transfer that remains and the data kept")
    dfd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides for --preset")
    dfd.add_argument("--scores", default=None, help="scores.jsonl from `sublim audit` (drop_top)")
    dfd.add_argument("--detector", default="number_frequency", help="whose scores drop_top uses")
    dfd.add_argument("--fraction", type=float, default=0.1, help="share of samples drop_top removes")
    dfd.add_argument("--seed", type=int, default=0)
    dfd.add_argument("--model", default=None, help="regenerate: the model that rewrites the completions")
    dfd.add_argument("--reference-data", default=None,
                     help="regenerate: answered examples (JSONL) shown before each prompt, for base models")
    dfd.add_argument("--shots", type=int, default=4, help="regenerate: examples per prompt (0 = chat template)")
    dfd.add_argument("--carrier", default="numbers", choices=["numbers", "code", "cot"],
                     help="regenerate: whose filter the new completions must pass")
    dfd.add_argument("--max-new-tokens", type=int, default=64)
    dfd.add_argument("--device", default="auto")
    dfd.add_argument("--prompt-field", default=None)
    dfd.add_argument("--completion-field", default=None)
    dfd.set_defaults(func=_cmd_defend)

    lin = sub.add_parser("lineage", help="provenance of a dataset; does a student share its generator's init?")
    lin.add_argument("action", choices=["check", "export"],
                     help="check: exit 1 when the student shares (or may share) the generator's initialization; "
                          "export: CycloneDX ML-BOM + dataset card")
    lin.add_argument("--dataset", required=True, help="a dataset artifact (runs/store/filter-… or its dataset.jsonl)")
    lin.add_argument("--student", default=None, help="the model you plan to train on it")
    lin.add_argument("--allow-unknown", action="store_true", help="check: exit 0 when the lineage is unknown")
    lin.add_argument("--out", default=None, help="export: directory (default: beside the dataset)")
    lin.set_defaults(func=_cmd_lineage)

    toy = sub.add_parser("toy", help="the auxiliary-logit MLP experiment and theory check")
    toy.add_argument("preset", nargs="?", default=None, help="toy preset name or .toml path")
    toy.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    toy.add_argument("--out", default=None, help="output directory (default: runs/toy/<hash>)")
    toy.set_defaults(func=_cmd_toy)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except SublimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; run the same command again to resume",
              file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
