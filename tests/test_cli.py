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
