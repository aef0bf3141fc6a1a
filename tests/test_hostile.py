"""Hostile and careless input: property-based fuzzing of every parser a user or client reaches, and the
cases a review found, each answered by a one-line error or an honest report, never a traceback."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sublim.audit.data import load_samples
from sublim.carriers.numbers import parse_numbers
from sublim.cli import main
from sublim.core.config import load_config
from sublim.core.errors import SublimError
from sublim.core.overrides import apply_overrides

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- fuzzing ------------------------------------------------------------------------------------------------

@FUZZ
@given(st.text(max_size=300))
def test_the_number_parser_answers_every_text(text: str) -> None:
    res = parse_numbers(text)
    assert res.ok == (res.reason == "")
    if res.ok:
        assert 1 <= len(res.numbers) <= 10 and all(0 <= v <= 999 for v in res.numbers)


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=12))
def test_the_dataset_reader_counts_every_line(tmp_path_factory: pytest.TempPathFactory, lines: list[bytes]) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "d.jsonl"
    good = json.dumps({"prompt": "p", "completion": "1, 2"}).encode()
    path.write_bytes(b"\n".join([*lines, good]) + b"\n")
    samples, report = load_samples(path)
    assert report.kept == len(samples) >= 1
    assert report.kept + sum(report.skipped.values()) == report.lines  # every non-blank line is counted once


@FUZZ
@given(st.lists(st.text(max_size=40), max_size=5))
def test_config_overrides_fail_as_one_line(overrides: list[str]) -> None:
    try:
        load_config("owl-numbers", overrides)
    except SublimError as exc:
        assert "\n" not in str(exc) and str(exc)


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
                    max_leaves=12))
def test_the_chat_request_parser_answers_every_body(tiny, body: object) -> None:
    from sublim.serve.errors import RequestError
    from sublim.serve.server import parse_chat_request

    _, tok = tiny
    for candidate in (body, {"messages": [{"role": "user", "content": "hi"}], "extra": body},
                      {"messages": [{"role": "user", "content": "hi"}], "max_tokens": body, "seed": body}):
        try:
            req = parse_chat_request(candidate if isinstance(candidate, dict) else {"messages": candidate}, tok)
        except RequestError as exc:
            assert 400 <= exc.status < 500 and exc.message
        else:
            assert req.max_tokens >= 1 and req.n >= 1


def test_overrides_into_a_value_are_refused() -> None:
    with pytest.raises(SublimError, match="is a value, not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])


# --- the audit ----------------------------------------------------------------------------------------------

def _lists(path: Path, n: int, seed: int, extra: str = "") -> Path:
    rng = random.Random(seed)
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": ", ".join(str(rng.randint(100, 999))
                                                                                for _ in range(5)) + extra}) + "\n"
                            for i in range(n)))
    return path


def test_the_audit_reports_what_it_audited_and_skips_what_cannot_run(tiny_model_dir: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data, ref = _lists(tmp_path / "d.jsonl", 40, 1), _lists(tmp_path / "r.jsonl", 40, 2)
    out = tmp_path / "a"
    code = main(["-q", "audit", str(data), "--reference", str(tiny_model_dir), "--reference-data", str(ref),
                 "--max-samples", "3", "--detectors", "number_frequency,likelihood_ratio", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    res = json.loads((out / "audit.json").read_text())
    assert res["n_audited"] == 3 and "3 audited of 40 samples" in res["verdict"]
    assert res["skipped_detectors"] == {"likelihood_ratio": "needs a suspected teacher (--teacher)"}
    assert "likelihood_ratio | skipped" in (out / "report.md").read_text()
    # completions without a single number: the number detectors say so instead of flagging
    words = tmp_path / "w.jsonl"
    words.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": "no numbers here"}) + "\n" for i in range(9)))
    code = main(["-q", "audit", str(words), "--reference", str(tiny_model_dir), "--reference-data", str(ref),
                 "--detectors", "number_frequency,bag_of_numbers,in_context", "--out", str(tmp_path / "w")])
    assert code == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "w" / "audit.json").read_text())
    assert set(res["skipped_detectors"]) == {"number_frequency", "bag_of_numbers"}
    assert "no number was parsed" in res["skipped_detectors"]["number_frequency"]
    assert not res["verdict"].startswith("SUSPECT") or "number" not in res["verdict"].split("(")[0]


@pytest.mark.parametrize("args, message", [
    (["--max-samples", "-5"], "--max-samples -5"),
    (["--max-samples", "1"], "at least 2"),
    (["--out", "FILE"], "is a file: give a directory"),
])
def test_bad_audit_arguments_are_one_line_before_any_work(tiny_model_dir: Path, tmp_path: Path, args: list[str],
                                                         message: str, capsys: pytest.CaptureFixture[str]) -> None:
    data = _lists(tmp_path / "d.jsonl", 10, 1)
    (tmp_path / "FILE").write_text("x")
    args = [str(tmp_path / "FILE") if a == "FILE" else a for a in args]
    assert main(["audit", str(data), "--reference", str(tiny_model_dir), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err


def test_a_one_sample_dataset_and_a_5000_digit_number(tiny_model_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"prompt": "p", "completion": "1, 2"}) + "\n")
    assert main(["audit", str(one), "--reference", str(tiny_model_dir)]) == 2
    assert "needs at least 2" in capsys.readouterr().err
    from sublim.audit.numbers import numbers_of

    assert numbers_of("7" * 5000 + ", 12") == [1000, 12]


# --- defend ---------------------------------------------------------------------------------------------------

def test_drop_top_refuses_scores_that_are_not_this_datasets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _lists(tmp_path / "d.jsonl", 10, 1)
    out = tmp_path / "o.jsonl"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"line": i + 100, "number_frequency": 0.5}) + "\n" for i in range(10)))
    samples = load_samples(data)[0]
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"line": i + 1, "sample": samples[i].digest(), "number_frequency": float(i)})
                            + "\n" for i in range(10)))
    # another dataset's scores on the same line numbers: refused by the samples' digests
    same_lines = tmp_path / "same-lines.jsonl"
    same_lines.write_text("".join(json.dumps({"line": i + 1, "sample": "0" * 16, "number_frequency": 1.0}) + "\n"
                                  for i in range(10)))
    for scores, fraction, message in ((empty, "0.1", "no score for 10 of 10"), (other, "0.1", "another dataset"),
                                      (same_lines, "0.1", "scored other contents"),
                                      (good, "-0.5", "--fraction -0.5"), (good, "5", "--fraction 5"),
                                      (tmp_path / "nope.jsonl", "0.1", "not found")):
        assert main(["defend", str(data), "--defence", "drop_top", "--scores", str(scores), "--fraction", fraction,
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and "\n" not in err.strip(), err
    assert not out.exists()
    assert main(["defend", str(data), "--defence", "drop_top", "--scores", str(good), "--fraction", "0.3",
                 "--out", str(out)]) == 0
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    assert [k["prompt"] for k in kept] == [f"p{i}" for i in range(7)]  # the three highest scores dropped


def test_defended_output_keeps_every_other_field_and_turn(tmp_path: Path) -> None:
    data = tmp_path / "chat.jsonl"
    rows = [{"id": i, "source": "teacher", "messages": [{"role": "system", "content": "be terse"},
                                                        {"role": "user", "content": "earlier"},
                                                        {"role": "assistant", "content": "ok"},
                                                        {"role": "user", "content": f"continue {i}"},
                                                        {"role": "assistant", "content": "9, 3, 5"}]}
            for i in range(3)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "sorted.jsonl"
    assert main(["defend", str(data), "--defence", "sort", "--out", str(out)]) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    for before, after in zip(rows, got, strict=True):
        assert after["messages"][-1]["content"] == "3, 5, 9"
        assert after["messages"][:-1] == before["messages"][:-1] and after["id"] == before["id"]
        assert after["source"] == "teacher"


# --- lineage and the store ----------------------------------------------------------------------------------------

def test_lineage_verifies_the_dataset_bytes(tiny_model_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from sublim.core.files import write_jsonl
    from sublim.core.store import Store

    store = Store(tmp_path / "runs")
    key = Store.key("filter", {"a": 1}, {"generation": "g"})
    path = store.begin("filter", key)
    write_jsonl(path / "dataset.jsonl", [{"index": 0, "prompt": "p", "completion": "1, 2"}])
    store.finish("filter", key, {"a": 1}, {"generation": "g"}, 0.0, label="x")
    (path / "dataset.jsonl").write_text('{"index": 0, "prompt": "p", "completion": "6, 6, 6"}\n')
    for action in (["check", "--student", str(tiny_model_dir), "--allow-unknown"], ["export"]):
        assert main(["lineage", *action, "--dataset", str(path)]) == 2
        err = capsys.readouterr().err
        assert "was changed after sublim made it" in err and "\n" not in err.strip()
    assert main(["lineage", "check", "--student", str(tiny_model_dir), "--dataset", str(tmp_path / "nope.jsonl"),
                 "--allow-unknown"]) == 2
    assert "not found" in capsys.readouterr().err


def test_a_manifest_without_its_file_list_is_refused(tmp_path: Path) -> None:
    from sublim.core.files import write_jsonl
    from sublim.core.store import Store

    store = Store(tmp_path)
    key = Store.key("generate", {}, {})
    path = store.begin("generate", key)
    write_jsonl(path / "samples.jsonl", [{"index": 0}])
    store.finish("generate", key, {}, {}, 0.0)
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["files"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SublimError, match="without its file list"):
        store.get("generate", key)


# --- runs ---------------------------------------------------------------------------------------------------------

def test_runs_list_survives_a_broken_run_and_show_stays_inside(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    for name, results in (("good-0000000001", '{"verdict": "TRANSFER: x"}'), ("bad-0000000002", "{not json")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        (tmp_path / name / "results.json").write_text(results)
    assert main(["--runs-dir", str(tmp_path), "runs", "list"]) == 0
    out = capsys.readouterr().out
    assert "TRANSFER: x" in out and "bad-0000000002" in out and "unreadable" in out
    elsewhere = tmp_path.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    (elsewhere / "report.md").write_text("secret")
    assert main(["--runs-dir", str(tmp_path), "runs", "show", "../elsewhere"]) == 2
    assert "is not a run id" in capsys.readouterr().err
    shutil.rmtree(elsewhere)


def test_a_model_that_cannot_load_leaves_no_run_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "config.json").write_text("{broken")
    assert main(["--runs-dir", str(tmp_path / "runs"), "run", "--set", f"model={bad}"]) == 2
    assert "config.json is not valid JSON" in capsys.readouterr().err
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf at all")
    assert main(["--runs-dir", str(tmp_path / "runs"), "run", "--set", f"model={fake}"]) == 2
    assert "not a readable GGUF file" in capsys.readouterr().err
    assert not list((tmp_path / "runs").glob("*/config.json"))


def test_a_bug_reaches_the_user_as_one_line_and_the_traceback_as_a_file(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import sublim.cli.presets

    def broken(args: object) -> None:
        raise KeyError("boom")

    monkeypatch.setenv("SUBLIM_CACHE", str(tmp_path))
    monkeypatch.setattr(sublim.cli.presets, "main", broken)
    assert main(["presets"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: internal error (KeyError") and "\n" not in err and "Traceback" not in err
    logs = list((tmp_path / "crashes").glob("crash-*.log"))
    assert len(logs) == 1 and "Traceback" in logs[0].read_text() and "boom" in logs[0].read_text()


def test_an_unknown_transformers_id_fails_at_once_without_the_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import time

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    t0 = time.time()
    assert main(["--runs-dir", str(tmp_path / "runs"), "run", "--set", "model=org/no-such-model"]) == 2
    assert time.time() - t0 < 10
    assert "not in the local model cache" in capsys.readouterr().err


# --- limits and names (issue: reliability) ----------------------------------------------------------------------

def _no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any weight loading fail loudly: the case must end before a model is loaded."""
    import sublim.backends.local.backend as local

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(local, "load_model", refuse)


def _long_line(path: Path) -> Path:
    """Two ordinary samples and one line of 150,000 numbers (733 KB: under the 1 MB line limit)."""
    rows = [{"prompt": "Continue: 1, 2, 3", "completion": "4, 5, 6"}] * 2
    rows.append({"prompt": "Continue: 1, 2, 3", "completion": ", ".join(str(i % 1000) for i in range(150_000))})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("verb", ["audit", "defend"])
def test_one_enormous_sample_is_refused_before_the_model_loads(tiny_model_dir: Path, tmp_path: Path, verb: str,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = _long_line(tmp_path / "long.jsonl")
    _no_model(monkeypatch)
    args = ["--detectors", "divergence_shift", "--out", str(tmp_path / "a")] if verb == "audit" else \
        ["--defence", "replace_divergent", "--out", str(tmp_path / "d.jsonl")]
    args += ["--reference"] if verb == "defend" else []
    cmd = [verb, str(data), *(["--reference", str(tiny_model_dir)] if verb == "audit" else []), *args]
    if verb == "defend":
        cmd.append(str(tiny_model_dir))
    assert main(["--runs-dir", str(tmp_path / "runs"), *cmd]) == 2
    err = capsys.readouterr().err.strip()
    assert "line 3" in err and "more than the limit of 2,048" in err and "--max-sample-tokens" in err, err
    assert "\n" not in err
    assert not (tmp_path / "d.jsonl").exists() and not (tmp_path / "a" / "audit.json").exists()


def test_reference_data_that_answers_other_prompts_is_refused(tiny_model_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    data = _lists(tmp_path / "d.jsonl", 10, 1)
    ref = tmp_path / "r.jsonl"
    ref.write_text("".join(json.dumps({"prompt": f"other {i}", "completion": "1, 2"}) + "\n" for i in range(10)))
    _no_model(monkeypatch)
    assert main(["audit", str(data), "--reference", str(tiny_model_dir), "--reference-data", str(ref),
                 "--detectors", "number_frequency", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "answers 0% of the audited prompts" in err and "at least 50%" in err


@pytest.mark.parametrize("args, message", [
    (["--defence", "reference_ends", "--max-new-tokens", "-1"], "--max-new-tokens -1"),
    (["--defence", "reference_ends", "--max-new-tokens", "0"], "--max-new-tokens 0"),
    (["--defence", "regenerate", "--shots", "-2"], "--shots -2"),
    (["--defence", "replace_divergent", "--max-sample-tokens", "0"], "--max-sample-tokens 0"),
])
def test_defend_numbers_out_of_range_are_one_line(tmp_path: Path, args: list[str], message: str,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    data = _lists(tmp_path / "d.jsonl", 10, 1)
    _no_model(monkeypatch)
    assert main(["defend", str(data), *args, "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "o.jsonl").exists()


def _written_outside(root: Path, runs: Path) -> list[Path]:
    return [p for p in root.rglob("*") if runs not in p.parents and p != runs]


@pytest.mark.parametrize("name", ["../escaped", "/tmp/sublim-escaped-abs", "a/../../escaped", "..", "x/y", ""])
def test_a_run_name_never_leaves_the_runs_directory(tiny_model_dir: Path, tmp_path: Path, name: str,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpers import tiny_config_text

    work = tmp_path / "work"
    work.mkdir()
    cfg = work / "c.toml"
    cfg.write_text(tiny_config_text(tiny_model_dir))
    runs = work / "runs"
    _no_model(monkeypatch)
    assert main(["--runs-dir", str(runs), "run", str(cfg), "--set", f"name={json.dumps(name)}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a plain name" in err and "\n" not in err, err
    assert _written_outside(work, runs) == [cfg] and not Path("/tmp/sublim-escaped-abs").exists()


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b"])
def test_a_sweep_name_never_leaves_the_runs_directory(tmp_path: Path, name: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "s.toml"
    sweep.write_text(f'name = {json.dumps(name)}\nseeds = [0, 1]\n')
    assert main(["--runs-dir", str(tmp_path / "runs"), "sweep", str(sweep), "--executor", "local"]) == 2
    assert "is not a plain name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


def test_the_store_refuses_a_path_outside_its_root(tmp_path: Path) -> None:
    from sublim.core.store import Store

    with pytest.raises(SublimError, match="outside"):
        Store(tmp_path / "runs").path("../../x", "0" * 16)


def test_a_huge_sweep_grid_is_refused_at_once_without_building_it(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import time

    sweep = tmp_path / "s.toml"
    values = ", ".join(str(i) for i in range(1000))
    sweep.write_text(f'name = "big"\n[axes]\n"prompts.seed" = [{values}]\n"generation.seed" = [{values}]\n')
    t0 = time.time()
    assert main(["--runs-dir", str(tmp_path / "runs"), "sweep", str(sweep), "--executor", "local"]) == 2
    assert time.time() - t0 < 20
    err = capsys.readouterr().err
    assert "1,000,000 runs, more than --max-runs 1,000" in err
    for cpus in ("-1", "0"):  # 0 used to fail inside a Ray worker
        assert main(["--runs-dir", str(tmp_path / "runs"), "sweep", str(sweep), "--executor", "local",
                     "--cpus-per-task", cpus]) == 2
        assert f"--cpus-per-task {cpus}" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["[]", "{oops", '{"stage": "filter"}', '"just a string"', "\xff\xfe"])
def test_a_malformed_manifest_is_refused_by_every_reader(tmp_path: Path, text: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from sublim.core.files import write_jsonl
    from sublim.core.store import Store

    store = Store(tmp_path)
    key = Store.key("filter", {}, {})
    path = store.begin("filter", key)
    write_jsonl(path / "dataset.jsonl", [{"prompt": "p", "completion": "1, 2"}])
    (path / "manifest.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(SublimError, match="manifest") as err:
        store.get("filter", key)
    assert str(path) in str(err.value) and "delete that directory" in str(err.value)
    assert main(["lineage", "check", "--student", str(tmp_path), "--dataset", str(path)]) == 2
    out = capsys.readouterr().err.strip()
    assert "manifest" in out and "\n" not in out, out


def test_an_unwritable_runs_directory_fails_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a runs directory under a file cannot be made, even by root
    data = _lists(tmp_path / "d.jsonl", 10, 1)
    _no_model(monkeypatch)
    sweep = tmp_path / "s.toml"
    sweep.write_text('name = "s"\nseeds = [0, 1]\n')
    for cmd in (["run"], ["audit", str(data), "--reference", "smollm2-135m", "--detectors", "number_frequency"],
                ["sweep", str(sweep), "--executor", "local"]):
        assert main(["--runs-dir", str(blocker / "runs"), *cmd]) == 2
        err = capsys.readouterr().err.strip()
        assert "cannot be written" in err and "\n" not in err, err


@pytest.mark.parametrize("defence", ["sort", "remap", "shuffle"])
def test_number_defences_pass_a_5000_digit_number_through(tmp_path: Path, defence: str) -> None:
    data = tmp_path / "big.jsonl"
    data.write_text(json.dumps({"prompt": "p", "completion": "7" * 5000 + ", 12"}) + "\n"
                    + json.dumps({"prompt": "q", "completion": "3, 2, 1"}) + "\n")
    out = tmp_path / "o.jsonl"
    assert main(["-q", "defend", str(data), "--defence", defence, "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["completion"] == "7" * 5000 + ", 12" and len(rows) == 2


def test_an_unreachable_ray_address_fails_within_its_timeout() -> None:
    import socket
    import time

    from sublim.sweep.ray_executor import check_reachable

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.time()
    with pytest.raises(SublimError, match=f"--address 127.0.0.1:{port}: no Ray cluster answered within 2 s"):
        check_reachable(f"127.0.0.1:{port}", 2.0)
    assert time.time() - t0 < 5
    check_reachable("auto", 2.0)  # Ray's own address forms are left to Ray


# --- hypothesis suites: the sweep grid and the manifest reader ---------------------------------------------------

_VALUES = st.one_of(st.integers(-5, 5), st.text(max_size=5), st.booleans(), st.floats(allow_nan=False, width=16))


@FUZZ
@given(st.dictionaries(st.sampled_from(["name", "base", "seeds", "axes", "set", "junk"]),
                       st.one_of(_VALUES, st.lists(_VALUES, max_size=4),
                                 st.dictionaries(st.text(max_size=8), st.lists(_VALUES, max_size=4), max_size=3)),
                       max_size=5))
def test_the_sweep_reader_answers_every_file(tmp_path_factory: pytest.TempPathFactory, data: dict[str, object]) -> None:
    from sublim.sweep import load_sweep
    from sublim.sweep.config import _toml

    scalars = [f"{k} = {_toml(v)}" for k, v in data.items() if not isinstance(v, dict)]
    tables = [f"[{k}]\n" + "".join(f"{_toml(kk)} = {_toml(vv)}\n" for kk, vv in v.items())
              for k, v in data.items() if isinstance(v, dict)]
    path = tmp_path_factory.mktemp("sweep") / "s.toml"
    path.write_text("\n".join(scalars) + "\n" + "\n".join(tables))
    try:
        sweep = load_sweep(path)
    except SublimError as exc:
        assert "\n" not in str(exc)
        return
    n = 1
    for values in sweep.axes.values():
        n *= len(values)
    assert sweep.grid_size() == n * max(len(sweep.seeds), 1)  # computed without building the grid


@FUZZ
@given(st.one_of(st.binary(max_size=60), st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(
        st.sampled_from(["stage", "key", "files", "inputs", "x"]), inner, max_size=4)), max_leaves=8).map(
    lambda v: json.dumps(v).encode())))
def test_the_manifest_reader_answers_every_file(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    from sublim.core.store import MANIFEST, read_manifest

    path = tmp_path_factory.mktemp("artifact")
    (path / MANIFEST).write_bytes(raw)
    try:
        manifest = read_manifest(path)
    except SublimError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    assert isinstance(manifest["stage"], str) and isinstance(manifest["key"], str)
    assert isinstance(manifest["files"], dict)
