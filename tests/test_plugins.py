"""Components added from outside the package: a carrier and a detector defined here, registered here,
run through the pipeline and through ``sublim audit`` without a package file edited."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from sublim.api import run_experiment
from sublim.audit.detectors import DETECTORS, AuditContext, AuditData, Detector, DetectorResult
from sublim.audit.numbers import numbers_of
from sublim.carriers import CARRIERS, Carrier, CarrierPrompt
from sublim.carriers.numbers import make_prompts, parse_numbers
from sublim.cli import main
from sublim.core.config import FilterConfig, PromptsConfig, load_config
from sublim.core.files import read_jsonl
from tests.helpers import tiny_config_text


def _even_sum_prompts(pc: PromptsConfig) -> list[CarrierPrompt]:
    return [CarrierPrompt(p.index, p.text.replace("\n\n", " Make the numbers add up to an even total.\n\n", 1), {})
            for p in make_prompts(pc.n, pc.seed)]


def _even_sum_check(text: str, meta: dict[str, Any], fc: FilterConfig) -> str:
    parsed = parse_numbers(text, fc.max_count, fc.max_value, fc.max_digits)
    if not parsed.ok:
        return parsed.reason
    return "" if sum(parsed.numbers) % 2 == 0 else "odd_sum"


class MeanValue:
    """Are the dataset's numbers larger than the reference's? (Mann–Whitney on per-sample means.)"""

    def __init__(self, reference: list[Any]) -> None:
        self.ref = np.array([np.mean(numbers_of(s.completion) or [0]) for s in reference])

    def score(self, samples: Any) -> DetectorResult:
        means = np.array([np.mean(numbers_of(s.completion) or [0]) for s in samples])
        p = float(mannwhitneyu(means, self.ref, alternative="greater").pvalue)
        return DetectorResult("mean_value", means, float(means.mean() - self.ref.mean()), p)


@pytest.fixture
def plugins() -> Iterator[None]:
    CARRIERS.add("even_sum", Carrier("even_sum", _even_sum_prompts, _even_sum_check, holds_words=False,
                                     filter_fields=frozenset({"max_count", "max_value", "max_digits"})))
    DETECTORS.add("mean_value", Detector("mean_value", lambda ctx, _: MeanValue(list(ctx.data.reference)).score(
        ctx.data.samples)))
    yield
    CARRIERS.remove("even_sum")
    DETECTORS.remove("mean_value")


@pytest.mark.slow
def test_a_carrier_registered_here_runs_through_the_pipeline(plugins: None, tiny_model_dir: Path,
                                                            tmp_path: Path) -> None:
    path = tmp_path / "even.toml"
    # a system-prompted teacher: the tiny model's fine-tuned owl teacher rarely writes numbers at all
    path.write_text(tiny_config_text(tiny_model_dir, prompts={"carrier": "even_sum", "n": 40},
                                     student={"method": "sft"},
                                     teacher={"method": "system_prompt", "gate_min_rate": 0.0},
                                     evaluation={"samples_per_question": 0}))
    res = run_experiment(load_config(str(path)), tmp_path / "runs", progress=False, echo=lambda s: None)
    control = res["filter"]["control"]
    assert control["reject_reasons"].get("odd_sum", 0) > 0 and control["kept"] > 0
    store = tmp_path / "runs" / "store"
    prompts = read_jsonl(next(store.glob("prompts-*/prompts.jsonl")))
    assert all("even total.\n\n" in p["prompt"] for p in prompts)
    for f in store.glob("filter-*/dataset.jsonl"):
        assert all(sum(parse_numbers(r["completion"]).numbers) % 2 == 0 for r in read_jsonl(f))
    assert res["n_train_examples"] == min(v["kept"] for v in res["filter"].values())
    assert "student-owl" in res["arms"] and res["verdict"]


def _lists(n: int, seed: int, low: int, high: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"prompt": f"Continue: {i}", "completion": ", ".join(str(rng.randint(low, high)) for _ in range(5))}
            for i in range(n)]


def test_a_detector_registered_here_runs_through_sublim_audit(plugins: None, tiny_model_dir: Path,
                                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    data, ref = tmp_path / "d.jsonl", tmp_path / "r.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _lists(40, 1, 500, 999)))
    ref.write_text("".join(json.dumps(r) + "\n" for r in _lists(40, 2, 100, 999)))
    out = tmp_path / "audit"
    code = main(["-q", "audit", str(data), "--reference", str(tiny_model_dir), "--reference-data", str(ref),
                 "--detectors", "mean_value,number_frequency", "--out", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    res = json.loads((out / "audit.json").read_text())
    assert [d["detector"] for d in res["detectors"]] == ["mean_value", "number_frequency"]
    mean = res["detectors"][0]
    assert mean["statistic"] > 100 and mean["p_value"] < 1e-4
    assert "mean_value" in (out / "report.md").read_text()
    assert main(["audit", str(data), "--reference", str(tiny_model_dir), "--detectors", "median"]) == 2
    assert "unknown detector 'median'" in capsys.readouterr().err


def test_registering_a_name_twice_is_refused(plugins: None) -> None:
    with pytest.raises(ValueError, match="already registered"):
        DETECTORS.add("mean_value", Detector("mean_value", lambda ctx, _: MeanValue([]).score([])))
    assert isinstance(AuditContext(AuditData([], [])).cache, dict)
