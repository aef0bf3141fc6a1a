"""Give the result files made before the envelope existed one, from git history (run once, kept to show how).

    python benchmarks/retrofit_envelopes.py

For every benchmarks/results/*.json without a ``schema_version``: the commit is the one that last
committed the file (the code that made it is that commit or an earlier one), the date that commit's,
the command the script its name says made it, machine and versions whatever the old file recorded.
The old figures become ``results`` unchanged, and ``retrofitted`` says all this, and that they were
measured before the architecture refactor and the scipy statistics (issue 14): stale until re-run.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from sublim.core.files import write_json
from sublim.core.records import SCHEMA_VERSION

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def command_for(name: str) -> list[str]:
    """The script (and arguments) a results file's name says made it."""
    stem = name.removesuffix("-cpu").removesuffix("-gpu")
    if stem.startswith("toy-"):
        return ["toy.py", "--presets", stem]
    if stem == "audit":
        return ["audit.py"]
    if stem.startswith("audit-"):
        return [stem.replace("-", "_") + ".py"]
    return ["owl_numbers.py", "--preset", stem]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def retrofit(path: Path) -> bool:
    old: dict[str, Any] = json.loads(path.read_text())
    if "schema_version" in old:
        return False
    rel = str(path.relative_to(ROOT))
    commit = git("log", "-1", "--format=%H", "--", rel)
    date = git("log", "-1", "--format=%cI", "--", rel)
    config = old.get("config", {})
    write_json(path, {
        "schema_version": SCHEMA_VERSION, "kind": "retrofitted", "git": {"commit": commit, "dirty": None},
        "command": command_for(path.stem), "config": config, "versions": old.get("versions", {}),
        "machine": old.get("machine", {}), "created": date, "wall_time_s": old.get("wall_time_s"),
        "retrofitted": {
            "by": "benchmarks/retrofit_envelopes.py",
            "note": "made before results carried an envelope: git.commit is the commit that committed the file "
                    "(its code made it, or an earlier commit's did), created is that commit's date, command is "
                    "inferred from the file name; machine and versions are what the old file recorded",
            "stale": "measured before the architecture refactor and the scipy statistics (issue 14): p-values "
                     "were normal approximations and intervals percentile bootstraps; re-run to refresh"},
        "results": old})
    return True


def main() -> None:
    for path in sorted((HERE / "results").glob("*.json")):
        if retrofit(path):
            print(f"retrofitted {path.name}")


if __name__ == "__main__":
    main()
