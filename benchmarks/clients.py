"""Benchmark: the field's own evaluation clients against `sublim serve` on loopback — lm-eval and inspect_ai.

    pip install -e ".[clients]"
    python benchmarks/clients.py            # the embedded model, CPU, about a minute

Starts `sublim serve MODEL` as its own process. lm-eval's `local-completions` model runs a log-likelihood
multiple-choice task (benchmarks/clients/animal_facts.jsonl: 32 questions of our own wording, four choices each)
through `/v1/completions` with `echo` and `logprobs`; every choice's log-likelihood that lm-eval logged is compared
with the same sum computed here from the model's weights in float32 (`sublim serve` computes in float32).
inspect_ai's OpenAI-compatible
provider runs a generation task on the same questions (one-word answers, greedy, scored by `includes`) through
`/v1/chat/completions`. Writes benchmarks/results/clients-<cpu|gpu>.json with both clients' versions and scores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sublim.backends.local.loading import load_model, load_tokenizer
from sublim.backends.local.throughput import throughput
from sublim.core.files import read_jsonl
from sublim.core.records import benchmark

HERE = Path(__file__).resolve().parent
DATA = HERE / "clients" / "animal_facts.jsonl"
TASK = "sublim_animal_facts"
TOLERANCE = 1e-3
"""The most a served choice's log-likelihood may differ from the one computed here (both float32: only the order
of summation differs)."""


def serve(model: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "sublim.cli", "serve", model, "--port", "0", "--name", "served"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    url = re.search(r"(http://127\.0\.0\.1:\d+/v1)", proc.stdout.readline())
    if url is None:
        proc.terminate()
        raise SystemExit("sublim serve did not print its address")
    return proc, url.group(1)


def task_yaml(folder: Path) -> None:
    """lm-eval's task file for the local data: a log-likelihood multiple choice (" " + choice after the stem)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {DATA}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: \"{{question}}\"\ndoc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: \"{{answer}}\"\nmetric_list:\n  - metric: acc\n    aggregation: mean\n"
        "    higher_is_better: true\n")


def lm_eval_run(url: str, tokenizer: str) -> dict[str, Any]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    folder = Path(tempfile.mkdtemp(prefix="sublim-lm-eval-"))
    task_yaml(folder)
    t0 = time.time()
    out = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=f"model=served,base_url={url}/completions,tokenizer_backend=huggingface,tokenizer={tokenizer},"
                   "num_concurrent=1,max_retries=1",
        tasks=[TASK], task_manager=TaskManager(include_path=str(folder)), log_samples=True, batch_size=1)
    assert out is not None
    samples = out["samples"][TASK]
    lls = {(s["doc_id"], i): float(r[0][0]) for s in samples for i, r in enumerate(s["resps"])}
    return {"version": lm_eval.__version__, "acc": out["results"][TASK]["acc,none"], "n": len(samples),
            "wall_time_s": round(time.time() - t0, 1), "loglikelihoods": lls}


def local_loglikelihoods(model_spec: str) -> dict[tuple[int, int], float]:
    """log p(" " + choice | stem) of every choice from the weights here, in float32, as lm-eval defines it."""
    lm = load_model(model_spec, "cpu")
    tok, net = lm.tokenizer, lm.model
    out = {}
    for d, row in enumerate(read_jsonl(DATA)):
        ctx = tok.encode(row["question"], add_special_tokens=False)
        for i, choice in enumerate(row["choices"]):
            whole = tok.encode(row["question"] + " " + choice, add_special_tokens=False)
            with torch.no_grad():
                logp = torch.log_softmax(net(torch.tensor([whole])).logits[0].float(), -1)
            out[(d, i)] = float(sum(logp[k - 1, whole[k]] for k in range(len(ctx), len(whole))))
    return out


def against_local(model: str, served: dict[tuple[int, int], float]) -> dict[str, Any]:
    """lm-eval's logged log-likelihoods against the weights' own, and the accuracy those give."""
    here = local_loglikelihoods(model)
    diff = np.array([abs(served[k] - here[k]) for k in here])
    rows = read_jsonl(DATA)
    local_acc = float(np.mean([int(np.argmax([here[(d, i)] for i in range(len(r["choices"]))])) == r["answer"]
                               for d, r in enumerate(rows)]))
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "example": {"question": rows[0]["question"], "choice": rows[0]["choices"][0], "served": served[(0, 0)],
                        "here": here[(0, 0)]},
            "tolerance": TOLERANCE, "within": bool(diff.max() <= TOLERANCE), "local_acc": local_acc}


def inspect_run(url: str, log_dir: Path) -> dict[str, Any]:
    import inspect_ai
    from inspect_ai import Task
    from inspect_ai import eval as inspect_eval
    from inspect_ai.dataset import Sample
    from inspect_ai.scorer import includes
    from inspect_ai.solver import generate, system_message

    rows = read_jsonl(DATA)
    task = Task(dataset=[Sample(input=f"Finish the sentence with one word. {r['question']} ...",
                                target=r["choices"][r["answer"]]) for r in rows],
                solver=[system_message("Answer with a single word."), generate()], scorer=includes(),
                config=inspect_ai.model.GenerateConfig(temperature=0.0, max_tokens=8))
    os.environ["SUBLIM_BASE_URL"], os.environ["SUBLIM_API_KEY"] = url, "unused"
    t0 = time.time()
    [log] = inspect_eval(task, model="openai-api/sublim/served", log_dir=str(log_dir), display="none")
    assert log.results is not None and log.samples is not None
    metrics = {k: v.value for s in log.results.scores for k, v in s.metrics.items()}
    return {"version": inspect_ai.__version__, "status": log.status, "metrics": metrics, "n": len(log.samples),
            "wall_time_s": round(time.time() - t0, 1),
            "first_answers": [s.output.completion for s in log.samples[:5]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    args = ap.parse_args()
    which = "gpu" if torch.cuda.is_available() else "cpu"
    with benchmark("clients", Path(args.results_dir) / f"clients-{which}.json", config=vars(args)) as out:
        tokenizer = tempfile.mkdtemp(prefix="sublim-tokenizer-")  # a plain tokenizer directory (the model: a GGUF)
        load_tokenizer(args.model).save_pretrained(tokenizer)
        proc, url = serve(args.model)
        try:
            lm = lm_eval_run(url, tokenizer)
            insp = inspect_run(url, Path(tempfile.mkdtemp(prefix="sublim-inspect-")))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        lm["against_local"] = against_local(args.model, lm.pop("loglikelihoods"))
        out.update({"model": args.model, "lm_eval": lm, "inspect_ai": insp, "throughput": throughput()})
        print(json.dumps({k: v for k, v in out.items() if k != "throughput"}, indent=2))


if __name__ == "__main__":
    main()
