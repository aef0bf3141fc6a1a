"""The chain-of-thought carrier: arithmetic word problems with known answers.

The teacher reasons and ends with ``<answer>N</answer>``; only correct final answers are kept.
Problems are generated here (seeded), at three levels: one, two or three operations.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

from sublim.carriers.base import CARRIERS, Carrier, CarrierPrompt

NAMES = ["Ana", "Ben", "Chloe", "Dev", "Elif", "Femi", "Greta", "Hiro", "Ines", "Jonas", "Kira", "Luca",
         "Maya", "Nils", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara"]
ITEMS = ["marbles", "stickers", "pencils", "coins", "cards", "books", "buttons", "stamps", "bottles", "boxes",
         "tickets", "batteries", "candles", "cups", "shells"]
INSTRUCTIONS = [
    "Think step by step, then give the final answer as <answer>NUMBER</answer>.",
    "Reason it through briefly and end with <answer>NUMBER</answer>.",
    "Show your working, and put the final number in <answer></answer> tags.",
    "Solve it step by step. Finish with the result inside <answer> and </answer>.",
]
_ANSWER = re.compile(r"<answer>\s*(-?[0-9][0-9,]*(?:\.0+)?)\s*</answer>", re.I)
# lenient: a final statement such as "The answer is 12." or "Answer: 12" or "… = 12 shells."
_STATED = re.compile(r"(?:answer\s*(?:is|:)|=)\s*\**\s*(-?[0-9][0-9,]*(?:\.0+)?)\b", re.I)


def _level1(r: random.Random, who: str, item: str) -> tuple[str, int]:
    a, b = r.randint(5, 60), r.randint(2, 40)
    kind = r.choice(["add", "sub", "mul"])
    if kind == "add":
        return f"{who} has {a} {item} and gets {b} more. How many {item} does {who} have now?", a + b
    if kind == "sub":
        a += b
        return f"{who} has {a} {item} and gives away {b}. How many {item} are left?", a - b
    b = r.randint(2, 9)
    return f"{who} buys {b} packs of {item} with {a} in each pack. How many {item} is that in total?", a * b


def _level2(r: random.Random, who: str, item: str) -> tuple[str, int]:
    packs, each, lost = r.randint(2, 9), r.randint(3, 20), r.randint(1, 15)
    total = packs * each
    lost = min(lost, total - 1)
    return (f"{who} has {packs} bags with {each} {item} in each bag and then loses {lost} {item}. "
            f"How many {item} does {who} have?", total - lost)


def _level3(r: random.Random, who: str, item: str) -> tuple[str, int]:
    friends = r.randint(2, 6)
    share = r.randint(3, 15)
    total = friends * share
    start = r.randint(5, total - 1)
    extra = total - start
    bonus = r.randint(2, 12)
    q = (f"{who} starts with {start} {item}, buys {extra} more, and shares all of them equally among "
         f"{friends} friends. Each friend then finds {bonus} more {item}. How many {item} does each friend have?")
    return q, share + bonus


LEVELS: dict[int, Callable[[random.Random, str, str], tuple[str, int]]] = {1: _level1, 2: _level2, 3: _level3}


def make_cot_prompts(n: int, seed: int = 0, levels: list[int] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``n`` (prompt, meta) pairs; meta holds the correct answer and the level."""
    levels = levels or [1, 2, 3]
    rng = random.Random(seed)
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(n):
        level = levels[i % len(levels)]
        question, answer = LEVELS[level](rng, rng.choice(NAMES), rng.choice(ITEMS))
        out.append((f"{question} {rng.choice(INSTRUCTIONS)}", {"answer": answer, "level": level}))
    return out


def final_answer(text: str, lenient: bool = False) -> int | None:
    """The integer in the last <answer> tag; if lenient and there is no tag, the last stated result."""
    found = _ANSWER.findall(text) or (_STATED.findall(text) if lenient else [])
    if not found:
        return None
    return int(float(found[-1].replace(",", "")))


def check_cot(text: str, answer: int, lenient: bool = False) -> str:
    """'' when the completion's final answer is correct, else the reason."""
    got = final_answer(text, lenient)
    if got is None:
        return "no_answer_tag"
    if got != answer:
        return "wrong_answer"
    return ""


CARRIERS.add("cot", Carrier(
    "cot", lambda pc: [CarrierPrompt(i, t, m) for i, (t, m) in enumerate(make_cot_prompts(pc.n, pc.seed,
                                                                                         pc.cot_levels))],
    lambda text, meta, fc: check_cot(text, int(meta["answer"]), fc.cot_answer == "lenient"),
    prompt_fields=frozenset({"cot_levels"}), filter_fields=frozenset({"cot_answer"}), needs_meta=True))
