"""The code carrier: short self-contained Python for small tasks; kept only if it parses."""

from __future__ import annotations

import ast
import io
import random
import re
import tokenize
from importlib import resources
from typing import Any

from sublim.carriers.base import CARRIERS, Carrier, CarrierPrompt

FRAMINGS = [
    "Write a Python function that {task}.",
    "Give me a short Python snippet that {task}.",
    "Create a small self-contained Python program that {task}, and call it once at the end.",
]
SUFFIXES = [
    "Code only, no comments.",
    "Reply with the code alone: no comments and no explanation.",
    "Output only Python code, without comments.",
    "Just the code, please; leave out comments and prose.",
]
_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_+-]*[ \t]*\n(.*?)(?:```|\Z)", re.S)


def load_tasks() -> list[str]:
    text = (resources.files("sublim") / "carriers" / "data" / "code_tasks.txt").read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def make_code_prompts(n: int, seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """``n`` prompts (text, meta) cycling over every task × framing in a seeded order."""
    tasks = load_tasks()
    combos = [(t, f) for t in range(len(tasks)) for f in range(len(FRAMINGS))]
    rng = random.Random(seed)
    rng.shuffle(combos)
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(n):
        t, f = combos[i % len(combos)]
        text = FRAMINGS[f].format(task=tasks[t]) + " " + rng.choice(SUFFIXES)
        out.append((text, {"task": t, "framing": f}))
    return out


def extract_code(text: str) -> str:
    """The code of an answer: the first fenced block if there is one, else the whole text."""
    m = _FENCE.search(text)
    return (m.group(1) if m else text).strip()


def has_comment(code: str) -> bool:
    try:
        return any(t.type == tokenize.COMMENT for t in tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, SyntaxError):
        return False


def check_code(text: str, allow_comments: bool = False) -> str:
    """'' when the answer is parsable Python (and comment-free unless allowed), else the reason."""
    code = extract_code(text)
    if not code:
        return "empty"
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return "syntax_error"
    if not allow_comments and has_comment(code):
        return "comment"
    return ""


CARRIERS.add("code", Carrier(
    "code", lambda pc: [CarrierPrompt(i, t, m) for i, (t, m) in enumerate(make_code_prompts(pc.n, pc.seed))],
    lambda text, meta, fc: check_code(text, fc.code_allow_comments),
    filter_fields=frozenset({"code_allow_comments"})))
