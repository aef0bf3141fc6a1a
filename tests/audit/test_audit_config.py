"""The audit config: each detector's own parameters, a stable hash, TOML with flags over it, one-line errors, and
the whole config in audit.json."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from sublim.audit.config import AuditConfig, load_audit_config
from sublim.audit.detectors import DETECTORS
from sublim.audit.detectors.divergence_shift import DivergenceShiftParams
from sublim.cli import main
from sublim.core.errors import SublimError


def test_a_validated_config_lists_every_detector_with_its_full_parameters() -> None:
    cfg = AuditConfig(dataset="d.jsonl", reference="m")
    assert cfg.detectors == [n for n in DETECTORS.names() if n != "student_probe"]  # it trains: named only
    assert cfg.detector["divergence_shift"] == {"inductions": "prompted", "placement": "prompt", "proxy_seeds": 1,
                                               "datasets_per_read": 0, "n_bootstrap": 1000, "statistic": "primary"}
    assert cfg.detector["number_frequency"] == {"n_permutations": 500}
    assert cfg.params("divergence_shift") == DivergenceShiftParams()
    assert cfg.detector["llm_judge"]["endpoint"] is None and cfg.detector["likelihood_ratio"] == {"teacher": None}


def test_the_config_round_trips_and_its_hash_is_stable() -> None:
    cfg = AuditConfig(dataset="d.jsonl", reference="m", contrasts=["a.jsonl", "b.jsonl"], seed=3, max_samples=50,
                      detectors=["number_frequency", "divergence_shift"],
                      detector={"divergence_shift": {"inductions": "proxy", "proxy_seeds": 2}})
    again = AuditConfig.model_validate(json.loads(json.dumps(cfg.model_dump(mode="json"))))
    assert again == cfg and again.config_hash() == cfg.config_hash()
    # the same audit said with its defaults written out has the same hash; any change of a setting changes it
    explicit = AuditConfig(dataset="d.jsonl", reference="m", contrasts=["a.jsonl", "b.jsonl"], seed=3,
                           max_samples=50, detectors=["number_frequency", "divergence_shift"],
                           detector={"number_frequency": {"n_permutations": 500},
                                     "divergence_shift": {"inductions": "proxy", "proxy_seeds": 2,
                                                          "placement": "prompt"}})
    assert explicit.config_hash() == cfg.config_hash()
    assert len({cfg.config_hash(), cfg.model_copy(update={"seed": 4}).config_hash(),
                AuditConfig(**{**cfg.model_dump(), "detector": {"divergence_shift": {"proxy_seeds": 3}}}
                            ).config_hash()}) == 3
    # fixed here so that a change to the hash or to a default is seen (it would orphan recorded audits' hashes)
    assert AuditConfig(dataset="d.jsonl", reference="m", detectors=["number_frequency"]).config_hash() == \
        "1328cc9d8393d50d8ca8900c95e0fd58800c68a47df3481e138805a886107758"  # candidates added


def test_a_toml_file_with_flags_over_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.toml"
    path.write_text('dataset = "d.jsonl"\nreference = "m"\nseed = 2\nmax_samples = 300\n'
                    'detectors = ["number_frequency", "divergence_shift"]\ncontrasts = ["a.jsonl"]\n\n'
                    '[detector.divergence_shift]\ninductions = "proxy"\nproxy_seeds = 3\n')
    cfg = load_audit_config(path)
    assert (cfg.seed, cfg.max_samples, cfg.contrasts) == (2, 300, ["a.jsonl"])
    assert cfg.params("divergence_shift") == DivergenceShiftParams(inductions="proxy", proxy_seeds=3)
    over = load_audit_config(path, {"seed": 5, "detector": {"divergence_shift": {"proxy_seeds": 1}}},
                             ["max_samples=20"])
    assert (over.seed, over.max_samples) == (5, 20)
    assert over.params("divergence_shift") == DivergenceShiftParams(inductions="proxy", proxy_seeds=1)  # merged
    assert over.config_hash() != cfg.config_hash()


@pytest.mark.parametrize("toml, message", [
    ('dataset = "d"\nreference = "m"\nmax_sample = 3\n', "unknown config key 'max_sample'"),
    ('dataset = "d"\nreference = "m"\n[detector.divergence_shift]\nproxy_seed = 2\n',
     "unknown key 'detector.divergence_shift.proxy_seed': remove it or check its spelling (its keys: inductions"),
    ('dataset = "d"\nreference = "m"\n[detector.divergence_shift]\ninductions = "other"\n',
     "detector.divergence_shift.inductions input should be 'prompted' or 'proxy'"),
    ('dataset = "d"\nreference = "m"\n[detector.divergence_shift]\nproxy_seeds = 0\n',
     "detector.divergence_shift.proxy_seeds input should be greater than or equal to 1 (got 0)"),
    ('dataset = "d"\nreference = "m"\n[detector.median]\nk = 1\n', "unknown detector 'median' in [detector.median]"),
    ('dataset = "d"\nreference = "m"\ndetectors = ["median"]\n', "unknown detector 'median' in detectors"),
    ('dataset = "d"\nreference = "m"\ndetectors = ["number_frequency"]\n[detector.in_context]\nk = 4\n',
     "in_context is not among the detectors run (number_frequency)"),
    ('dataset = "d"\nreference = "m"\nseed = "1"\n', "config key 'seed' input should be a valid integer"),
    ('dataset = "d"\nreference = "m"\nmax_samples = 1\n', "--max-samples 1 (max_samples): an audit compares at least"),
    ('reference = "m"\n', "the audit has no dataset: give DATASET"),
])
def test_a_bad_key_or_value_is_one_line_saying_what_where_and_how(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "audit.toml"
    path.write_text(toml)
    with pytest.raises(SublimError) as err:
        load_audit_config(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text, text


def _lists(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    path.write_text("".join(json.dumps({"prompt": f"Continue: {i}", "completion": ", ".join(
        str(rng.randint(100, 999)) for _ in range(5))}) + "\n" for i in range(n)))
    return path


def test_audit_json_carries_the_whole_config_from_toml_and_flags(tiny_model_dir: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    data, ref = _lists(tmp_path / "d.jsonl", 30, 1), _lists(tmp_path / "r.jsonl", 30, 2)
    path = tmp_path / "audit.toml"
    path.write_text(f'dataset = "{data}"\nreference = "{tiny_model_dir}"\nreference_data = "{ref}"\n'
                    'detectors = ["number_frequency", "bag_of_numbers"]\nseed = 1\n\n'
                    '[detector.number_frequency]\nn_permutations = 50\n')
    out = tmp_path / "a"
    code = main(["-q", "audit", "--config", str(path), "--max-samples", "20", "--seed", "7",
                 "--set", "detector.bag_of_numbers.folds=3", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    res = json.loads((out / "audit.json").read_text())
    cfg = AuditConfig.model_validate(res["config"])
    assert res["config_hash"] == cfg.config_hash()
    assert (cfg.seed, cfg.max_samples, cfg.reference_data) == (7, 20, str(ref))  # the flags won over the file
    assert cfg.detector == {"number_frequency": {"n_permutations": 50}, "bag_of_numbers": {"folds": 3}}
    assert res["n_audited"] == 20 and [d["detector"] for d in res["detectors"]] == cfg.detectors
    assert res["detectors"][1]["folds"] == 3  # the parameter reached the detector
    # an unknown key on the command line is one line naming it, before any work
    assert main(["audit", "--config", str(path), "--set", "detector.bag_of_numbers.fold=3",
                 "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key 'detector.bag_of_numbers.fold'" in err and "\n" not in err
    assert not (tmp_path / "b").exists()
