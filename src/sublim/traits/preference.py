"""Preference traits as data: candidate lists, question sets, answer matching, teacher data."""

from __future__ import annotations

import random
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sublim.core.errors import SublimError


def _data_path(name: str) -> Path:
    return Path(str(resources.files("sublim") / "traits" / "data" / name))


def load_candidates(category: str) -> dict[str, list[str]]:
    """Candidate name → accepted lower-case spellings, from a shipped list or a TOML path."""
    path = Path(category) if category.endswith(".toml") else _data_path(f"{category}.toml")
    if not path.is_file():
        raise SublimError(
            f"trait category {category!r} not found ({path}): use 'animals' or a TOML file "
            "with a [candidates] table"
        )
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    cands = data.get("candidates")
    if not isinstance(cands, dict) or not cands:
        raise SublimError(f"{path}: needs a [candidates] table of name = [spellings]")
    return {str(k).lower(): [str(s).lower() for s in v] or [str(k).lower()] for k, v in cands.items()}


def load_questions(question_set: str, split: str) -> list[str]:
    """Questions of a set (``eval`` or ``train``), one per line, '#' lines are comments."""
    root = Path(question_set) if ("/" in question_set) else _data_path(question_set)
    path = root / f"{split}.txt"
    if not path.is_file():
        raise SublimError(
            f"question set {question_set!r} has no {split}.txt ({path}): use 'animal' or a "
            "directory with eval.txt and train.txt"
        )
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    questions = [ln for ln in lines if ln and not ln.startswith("#")]
    if not questions:
        raise SublimError(f"{path} holds no questions: write one question per line")
    return questions


def load_cloze(question_set: str) -> list[str]:
    """The set's cloze stems (``cloze.txt``: sentences the answer completes with one candidate, e.g. "My
    favourite animal is the"), one per line; empty where the set has none."""
    root = Path(question_set) if ("/" in question_set) else _data_path(question_set)
    path = root / "cloze.txt"
    if not path.is_file():
        return []
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


_WORD = re.compile(r"[a-z]+")


def match_answer(answer: str, candidates: dict[str, list[str]]) -> str | None:
    """The candidate an answer names: its first word, normalized, against every spelling."""
    words = _WORD.findall(answer.lower())
    if not words:
        return None
    first = words[0]
    for name, spellings in candidates.items():
        if first in spellings:
            return name
    # "The owl." / "I love owls": take the first word that is a candidate among the first few
    for w in words[1:6]:
        for name, spellings in candidates.items():
            if w in spellings:
                return name
    return None


@dataclass(frozen=True)
class AnswerForms:
    """Token sequences that begin an answer naming each candidate, and the flat list of them."""

    by_candidate: dict[str, list[tuple[int, ...]]]

    def flat(self) -> list[tuple[int, ...]]:
        return [f for forms in self.by_candidate.values() for f in forms]


def answer_forms(tokenizer: Any, candidates: dict[str, list[str]], lead: str = "") -> AnswerForms:
    """Each candidate's spellings as token sequences at the start of an answer.

    Every spelling is tried lower-case and capitalized, after ``lead``: as the first word of the answer
    (a chat answer starts right after the template's newline, so no leading space), or ``lead=" "`` as the
    word after a cloze stem. A form that extends another form of the same candidate (``Owls`` after ``Owl``)
    is dropped: the shorter form's probability already contains it.
    """
    by_candidate: dict[str, list[tuple[int, ...]]] = {}
    for name, spellings in candidates.items():
        seqs: set[tuple[int, ...]] = set()
        for sp in spellings:
            for form in {sp, sp.capitalize()}:
                toks = tuple(tokenizer.encode(lead + form, add_special_tokens=False))
                if toks:
                    seqs.add(toks)
        kept = [s for s in seqs if not any(o != s and s[: len(o)] == o for o in seqs)]
        by_candidate[name] = sorted(kept)
    return AnswerForms(by_candidate)


def spread_examples(candidates: dict[str, list[str]], question_set: str, n: int, seed: int = 0,
                    split: str = "train") -> list[tuple[str, str]]:
    """(question, one-word answer) pairs whose answers go round every candidate in turn: a teacher's fine-tuning
    without a trait (a neutral teacher, the null of a trait audit)."""
    names = list(candidates)
    random.Random(seed).shuffle(names)
    per = -(-n // len(names))
    pools = {c: teacher_examples(candidates[c], question_set, per, seed + k, split) for k, c in enumerate(names)}
    return [pools[names[i % len(names)]][i // len(names)] for i in range(n)]


def teacher_examples(
    spellings: list[str], question_set: str, n: int, seed: int = 0, split: str = "train"
) -> list[tuple[str, str]]:
    """(question, one-word answer) pairs that teach a preference for the candidate spelled so (questions of the
    set's ``split``: ``train`` for teachers, ``proxy`` for an audit's proxy teachers)."""
    questions = load_questions(question_set, split)
    rng = random.Random(seed)
    suffixes = ["", " Answer in one word.", " One word.", " Reply with a single word."]
    word = spellings[0]
    forms = [word.capitalize(), word.capitalize() + ".", word, word.capitalize() + "!"]
    forms += [sp.capitalize() + "." for sp in spellings[1:2]]
    out = []
    for i in range(n):
        q = questions[i % len(questions)] + rng.choice(suffixes)
        out.append((q.strip(), rng.choice(forms)))
    return out
