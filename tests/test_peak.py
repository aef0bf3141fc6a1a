"""Per-stage peak memory: each measurement sees its own peak, and the process peak survives the resets."""

from __future__ import annotations

from pathlib import Path

import pytest

from sublim.core.peak import measured_peak, process_peak_mb
from sublim.core.records import peak_memory_mb

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's clear_refs")

MB = 1 << 20


def touch(mb: int) -> bytearray:
    """A block of ``mb`` MB whose every page is resident."""
    block = bytearray(mb * MB)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return block


def test_a_stage_sees_its_own_peak_not_the_process_running_maximum() -> None:
    big = touch(300)
    del big
    with measured_peak() as small:
        block = touch(20)
        del block
    with measured_peak() as large:
        block = touch(200)
        del block
    assert small["peak_rss_mb"] is not None and large["peak_rss_mb"] is not None
    assert large["peak_rss_mb"] - small["peak_rss_mb"] > 150  # the 300 MB before it does not count
    own = process_peak_mb()
    assert own is not None and own >= large["peak_rss_mb"] + 80  # the reset did not forget the 300 MB block
    assert peak_memory_mb()["self"] >= own


def test_an_outer_measurement_includes_what_an_inner_one_saw() -> None:
    with measured_peak() as outer:
        with measured_peak() as inner:
            block = touch(200)
            del block
        block = touch(10)
        del block
    assert inner["peak_rss_mb"] is not None and outer["peak_rss_mb"] is not None
    assert outer["peak_rss_mb"] >= inner["peak_rss_mb"] > 150
