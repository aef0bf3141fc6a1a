"""The sublim command: verbs, exit codes and one-line errors."""

from __future__ import annotations

from pathlib import Path

from sublim.cli import main


def test_presets_and_models(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "owl-numbers" in out and "dolphin-numbers" in out and "toy-digits" in out
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "gemma3-270m" in out


def test_bad_override_is_one_line_exit_2(capsys, tmp_path: Path):
    assert main(["--runs-dir", str(tmp_path), "run", "--set", "student.epoch=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "student.epoch" in err and "\n" not in err
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_unknown_model_is_one_line(capsys, tmp_path: Path):
    assert main(["--runs-dir", str(tmp_path), "run", "--set", "model=/no/such/model.gguf"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not found" in err and "\n" not in err


def test_runs_list_and_show(capsys, tmp_path: Path):
    assert main(["--runs-dir", str(tmp_path), "runs", "list"]) == 0
    assert "no runs" in capsys.readouterr().out
    assert main(["--runs-dir", str(tmp_path), "runs", "show", "nope"]) == 2
    assert "no single run" in capsys.readouterr().err
    run = tmp_path / "demo-0123456789"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert main(["--runs-dir", str(tmp_path), "runs", "list"]) == 0
    assert "unfinished" in capsys.readouterr().out
    (run / "results.json").write_text('{"verdict": "TRANSFER: demo"}')
    (run / "report.md").write_text("# demo report\n")
    assert main(["--runs-dir", str(tmp_path), "runs", "list"]) == 0
    assert "TRANSFER: demo" in capsys.readouterr().out
    assert main(["--runs-dir", str(tmp_path), "runs", "show", "demo"]) == 0
    assert "# demo report" in capsys.readouterr().out


def test_global_flags_work_after_the_verb_and_version_and_defaults_show(capsys, tmp_path: Path):
    import pytest

    from sublim import __version__
    from sublim.cli import build_parser

    before = build_parser().parse_args(["--runs-dir", "A", "-q", "runs", "list"])
    after = build_parser().parse_args(["runs", "list", "--runs-dir", str(tmp_path), "-q"])
    plain = build_parser().parse_args(["runs", "list"])
    assert (before.runs_dir, before.quiet) == ("A", True)
    assert (after.runs_dir, after.quiet) == (str(tmp_path), True)
    assert (plain.runs_dir, plain.quiet) == ("runs", False)
    kept = build_parser().parse_args(["--runs-dir", "A", "runs", "-q", "list"])  # a flag left out after keeps its value
    assert (kept.runs_dir, kept.quiet) == ("A", True)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"sublim {__version__}"
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "(default:" in capsys.readouterr().out


def test_audit_fail_on_exits_1_on_a_planted_dataset_and_0_on_a_null_one(capsys, tmp_path: Path,
                                                                        tiny_model_dir: Path):
    import json

    from tests.audit.test_audit import _numbers_data, _write

    ref = _write(tmp_path / "ref.jsonl", _numbers_data(300, 1))
    codes = {}
    for name, rows in (("planted", _numbers_data(300, 2, lucky=777)), ("null", _numbers_data(300, 3))):
        data = _write(tmp_path / f"{name}.jsonl", rows)
        out = tmp_path / name
        codes[name] = main(["audit", str(data), "-q", "--reference", str(tiny_model_dir), "--reference-data",
                            str(ref), "--detectors", "number_frequency,bag_of_numbers", "--fail-on", "suspect",
                            "--runs-dir", str(tmp_path / "runs"), "--out", str(out)])
        res = json.loads((out / "audit.json").read_text())
        assert bool(res["flagged"]) == (name == "planted") and res["identified"] is None
        assert "Holm across 2 detectors" in res["verdict"]
    assert codes == {"planted": 1, "null": 0}, capsys.readouterr()
    assert "failing (--fail-on suspect)" in capsys.readouterr().out


def test_every_flag_and_argument_of_every_command_has_help():
    import argparse

    from sublim.cli import _commands, build_parser

    top = build_parser()
    missing = [f"{c.prog} {a.option_strings or a.dest}" for c in [top, *_commands(top)] for a in c._actions
               if not a.help and not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)]
    assert missing == []


def test_a_reader_that_goes_away_is_not_an_internal_error():
    """``sublim presets | head -1``: the pipe closes before the command writes; it stops quietly (exit 141, as
    a shell reports SIGPIPE), no crash log, no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "sublim.cli", "presets"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the interpreter has even started
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert "internal error" not in err and "Traceback" not in err
