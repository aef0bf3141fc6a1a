"""What a result records about where it came from: library versions, the machine, the code.

``envelope`` is the one function that wraps a benchmark's figures for ``benchmarks/results/``
(schema version, git commit, command line, config, versions, machine, date, wall time); ``benchmark`` runs a
benchmark's body and writes its envelope.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from sublim.core.files import write_json
from sublim.core.peak import maxrss_mb, process_peak_mb

SCHEMA_VERSION = 1
ENVELOPE_KEYS = ("schema_version", "kind", "git", "command", "config", "versions", "machine", "created",
                 "wall_time_s", "results")
PACKAGES = ("sublim", "torch", "transformers", "peft", "accelerate", "gguf", "numpy", "scipy", "scikit-learn",
            "tokenizers", "safetensors")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


FAST_MATMUL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
"""The CPU flags that decide how fast a CPU multiplies in float32 and bf16, recorded with every result so that
timings are compared between like machines."""


def cpu_identity(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU's model name, family and model number and which of :data:`FAST_MATMUL_FLAGS` it has, from
    ``/proc/cpuinfo`` (``cpuinfo``: its text); empty where there is none (not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {}
    first: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in first:
            first[key.strip()] = value.strip()
    if not first:
        return {}
    flags = set(first.get("flags", "").split())
    return {"cpu_model": first.get("model name"), "cpu_family": first.get("cpu family"),
            "cpu_model_number": first.get("model"), "cpu_flags": [f for f in FAST_MATMUL_FLAGS if f in flags]}


def machine_info() -> dict[str, Any]:
    """Platform, CPU and (when torch is already loaded and sees one) the GPU; never imports torch itself."""
    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count()}
    with contextlib.suppress(OSError, AttributeError):
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    info.update(cpu_identity())
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


RESULTS = ("benchmarks/results", "benchmarks/data/*/readings.jsonl")
"""What benchmarks write (git glob pathspecs): their results, and the readings a benchmark that runs over several
sittings appends as it goes. A file changed there (by an earlier benchmark, or an earlier reading of this one) is
not a change of the code, so it is listed (``results_changed``), not counted as dirty. Datasets under
``benchmarks/data`` are inputs: a change to them is dirty."""


def git_state(root: Path | None = None) -> dict[str, Any]:
    """The commit the code is at, whether the tree had uncommitted changes to tracked files outside
    :data:`RESULTS` (None outside a checkout) and, when it had, their diff against the commit: the result can
    then be tied to the code."""
    cwd = str(root or Path(__file__).resolve().parent)

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    code = ("--", ":/", *(f":(top,glob,exclude){p}" for p in RESULTS))  # every tracked file but what benchmarks write
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", *code)
    dirty = bool(status) if status is not None else None
    written = (git("diff", "--name-only", "HEAD", "--", *(f":(top,glob){p}" for p in RESULTS)) or "").split()
    return {"commit": commit, "dirty": dirty, **({"diff": git("diff", "HEAD", *code)} if dirty else {}),
            **({"results_changed": written} if written else {})}


def envelope(kind: str, results: dict[str, Any], *, config: Any, started: float, git: dict[str, Any],
             command: list[str] | None = None) -> dict[str, Any]:
    """A benchmark's figures with everything needed to reproduce them. ``git`` is :func:`git_state` taken
    when the benchmark started (the tree may change while it runs)."""
    return {"schema_version": SCHEMA_VERSION, "kind": kind, "git": git,
            "command": command if command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]],
            "config": config, "versions": library_versions(), "machine": machine_info(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_time_s": round(time.time() - started, 1), "peak_memory_mb": peak_memory_mb(), "results": results}


@contextlib.contextmanager
def benchmark(kind: str, path: Path, *, config: Any, command: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """One benchmark run: the git state is taken on entry (the tree may change while it runs), the block fills the
    dict it is given with its results, and on a clean exit the envelope is written to ``path``. A block that
    raises writes nothing: no result file is ever half a run."""
    started, git = time.time(), git_state()
    results: dict[str, Any] = {}
    yield results
    write_json(path, envelope(kind, results, config=config, started=started, git=git, command=command))


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process (stage measurements' resets included) and of its largest waited-for
    child (MB), as the kernel counted them."""
    found = {"self": process_peak_mb(), "children": maxrss_mb(children=True)}
    return {k: v for k, v in found.items() if v is not None}


def check_envelope(obj: Any, where: str) -> list[str]:
    """What is wrong with a result file's envelope (empty when it is sound)."""
    if not isinstance(obj, dict):
        return [f"{where}: not a JSON object"]
    problems = [f"{where}: missing {k!r}" for k in ENVELOPE_KEYS if k not in obj]
    if obj.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"{where}: schema_version {obj.get('schema_version')!r} is not {SCHEMA_VERSION}")
    git = obj.get("git")
    if not isinstance(git, dict) or not (isinstance(git.get("commit"), str) and len(git["commit"]) == 40):
        problems.append(f"{where}: git.commit is not a 40-hex commit")
    if not isinstance(obj.get("command"), list) or not obj.get("command"):
        problems.append(f"{where}: command is not a non-empty list")
    for k in ("versions", "machine", "results"):
        if k in obj and not isinstance(obj[k], dict):
            problems.append(f"{where}: {k} is not an object")
    return problems
