"""Every figure in a marked block of the README is in the committed result files it names.

A block starts with ``<!-- figures: PATH [PATH …] -->`` and runs to the next blank line. Each number in it
(outside code spans, not part of a word) must be some number of those files (a number value, or a number
in a recorded string such as a verdict line), written at the README's precision: 4.86 for 4.8586…,
1.8e-15 for 1.776…e-15, 873 for 873.4, 3,657 for 3657.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"<!-- figures: (.+?) -->")
NUMBER = re.compile(r"(?<![\w.\-])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?(?:e-?\d+)?)(?![\w\-]|\.\d)")


def blocks(text: str) -> list[tuple[list[str], str]]:
    out, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        m = MARK.search(line)
        if m:
            body = []
            for nxt in lines[i + 1:]:
                if not nxt.strip():
                    break
                body.append(nxt)
            out.append((m.group(1).split(), "\n".join(body)))
    return out


def numbers_in(obj: Any) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int | float):
        return [float(obj)]
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in numbers_in(x)]
    if isinstance(obj, list):
        return [v for x in obj for v in numbers_in(x)]
    if isinstance(obj, str):  # a verdict line the file records ("×4.53 [3.57, 5.33], p=1.8e-15")
        return [float(m.group(1).replace(",", "")) for m in NUMBER.finditer(obj)]
    return []


def written_as(value: float, text: str) -> bool:
    """Whether ``text`` is how the README would write ``value`` at its precision."""
    if "e" in text:
        mantissa = text.split("e")[0]
        digits = len(mantissa.replace(".", "").lstrip("0")) or 1
        return float(f"{value:.{digits}g}") == float(text)
    clean = text.replace(",", "")
    decimals = len(clean.split(".")[1]) if "." in clean else 0
    return f"{value:.{decimals}f}" == clean


DOCUMENTS = {"README.md": 19, "docs/results.md": 31}
"""The files whose marked figures are checked (the README and the research log it points to), and how many marked
blocks each has at least."""


@pytest.mark.parametrize("doc", DOCUMENTS)
def test_every_marked_figure_is_in_its_result_files(doc: str) -> None:
    text = (ROOT / doc).read_text()
    found = blocks(text)
    assert len(found) >= DOCUMENTS[doc], f"the figure blocks of {doc} are marked"
    missing = []
    for paths, body in found:
        values = [v for p in paths for v in numbers_in(json.loads((ROOT / p).read_text()))]
        prose = re.sub(r"`[^`]*`", "", body)
        for m in NUMBER.finditer(prose):
            if not any(written_as(v, m.group(1)) for v in values):
                missing.append(f"{m.group(1)} (in: {body[max(0, m.start() - 40):m.end() + 20]!r})")
    assert not missing, missing


def test_the_check_finds_a_figure_that_is_not_there() -> None:
    assert written_as(4.858649, "4.86") and written_as(1.7763e-15, "1.8e-15") and written_as(2.99e-11, "3e-11")
    assert written_as(3657.2, "3,657") and not written_as(3.15, "3.16")
    body = "owl probability ×3.15 [2.72, 3.61]"
    nums = [m.group(1) for m in NUMBER.finditer(body)]
    assert nums == ["3.15", "2.72", "3.61"]
    assert [m.group(1) for m in NUMBER.finditer("a 2-core CPU, MNIST 10k, smollm2-135m, 0.5x")] == []
