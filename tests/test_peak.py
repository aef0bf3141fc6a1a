"""Per-stage peak memory: each measurement sees its own peak, and the process peak survives the resets.

Measured in a fresh interpreter: in the test process, memory freed by earlier tests (training keeps freed memory
for reuse) would hold the blocks these tests allocate without raising the resident size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's clear_refs")

PROBE = """
import json
from sublim.core.peak import measured_peak, process_peak_mb
from sublim.core.records import peak_memory_mb

def touch(mb):
    block = bytearray(mb << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return block

big = touch(300)
del big
with measured_peak() as small:
    block = touch(20)
    del block
with measured_peak() as large:
    block = touch(200)
    del block
with measured_peak() as outer:
    with measured_peak() as inner:
        block = touch(200)
        del block
    block = touch(10)
    del block
print(json.dumps({"small": small["peak_rss_mb"], "large": large["peak_rss_mb"], "outer": outer["peak_rss_mb"],
                  "inner": inner["peak_rss_mb"], "own": process_peak_mb(), "self": peak_memory_mb()["self"]}))
"""


@pytest.fixture(scope="module")
def peaks() -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120)
    got: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(v is not None for v in got.values()), got
    return got


def test_a_stage_sees_its_own_peak_not_the_process_running_maximum(peaks: dict[str, Any]) -> None:
    assert peaks["large"] - peaks["small"] > 150  # the 300 MB block before them does not count
    assert peaks["own"] >= peaks["large"] + 80  # the resets did not make the process forget the 300 MB block
    assert peaks["self"] >= peaks["own"]


def test_an_outer_measurement_includes_what_an_inner_one_saw(peaks: dict[str, Any]) -> None:
    assert peaks["outer"] >= peaks["inner"] > peaks["small"] + 150
