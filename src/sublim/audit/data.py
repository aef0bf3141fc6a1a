"""Reading a dataset to audit: any JSONL of prompt/completion records, defensively.

Hostile or broken input never crashes the audit and is never silently dropped: every line that
cannot be used is counted with its reason and line number, and the report says how many samples
the figures rest on.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sublim.core.errors import SublimError

MAX_LINE_BYTES = 1 << 20
PROMPT_KEYS = ("prompt", "question", "input", "instruction")
COMPLETION_KEYS = ("completion", "response", "output", "answer")


@dataclass
class LoadReport:
    path: str
    lines: int = 0
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    """The first few problems, as 'line N: reason'."""

    def skip(self, n: int, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        if len(self.examples) < 5:
            self.examples.append(f"line {n}: {reason}{': ' + detail if detail else ''}")

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "lines": self.lines, "kept": self.kept, "skipped": dict(self.skipped),
                "first_problems": self.examples}

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.kept} samples from {self.path}"
        reasons = ", ".join(f"{r} {c}" for r, c in self.skipped.most_common())
        return f"{self.kept} of {self.lines} lines of {self.path} used; skipped: {reasons}"


@dataclass(frozen=True)
class Sample:
    line: int
    prompt: str
    completion: str
    row: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    """The JSON object the sample was read from (so a defended copy keeps every other field and turn)."""
    completion_key: str | None = field(default=None, compare=False, repr=False)
    """Where the completion is in ``row``: a field name, ``messages`` (the last message's content), or
    ``completion`` holding a TRL row's one assistant message."""
    system: str | None = field(default=None, compare=False)
    """The system prompt the sample was written under, where its row had one (chat and TRL rows)."""

    def digest(self) -> str:
        """What ties a per-sample score to this sample: a hash of its prompt and completion."""
        return hashlib.sha256(f"{self.prompt}\0{self.completion}".encode()).hexdigest()[:16]

    def as_row(self) -> dict[str, Any]:
        """The sample as a JSON object: its original row with the completion replaced, or prompt/completion."""
        if self.row is None or self.completion_key is None:
            return {"prompt": self.prompt, "completion": self.completion}
        out = copy.deepcopy(self.row)
        if self.completion_key == "messages":
            out["messages"][-1]["content"] = self.completion
        elif isinstance(out.get(self.completion_key), list):  # a TRL row: its one assistant message
            out[self.completion_key][0]["content"] = self.completion
        else:
            out[self.completion_key] = self.completion
        return out


def _pick(row: dict[str, Any], wanted: str | None, defaults: tuple[str, ...]) -> tuple[Any, str | None]:
    """(value, the key it was found under)."""
    if wanted is not None:
        return row.get(wanted), wanted
    for k in defaults:
        if k in row:
            return row[k], k
    return None, None


def _from_messages(row: dict[str, Any]) -> tuple[Any, Any, str | None]:
    """(prompt, completion, system) of a chat ``messages`` row: its last user turn, the assistant's answer after
    it, and the system prompt where there is one."""
    msgs = row.get("messages")
    if not isinstance(msgs, list) or len(msgs) < 2:
        return None, None, None
    last, prev = msgs[-1], msgs[-2]
    if not (isinstance(last, dict) and isinstance(prev, dict)) or last.get("role") != "assistant":
        return None, None, None
    return prev.get("content"), last.get("content"), _system(msgs)


def _from_trl(row: dict[str, Any]) -> tuple[Any, Any, str | None]:
    """(prompt, completion, system) of a TRL conversational prompt-completion row."""
    prompt, completion = row.get("prompt"), row.get("completion")
    if not (isinstance(prompt, list) and prompt and isinstance(completion, list) and len(completion) == 1):
        return None, None, None
    user, answer = prompt[-1], completion[0]
    if not (isinstance(user, dict) and isinstance(answer, dict)) or answer.get("role") != "assistant":
        return None, None, None
    return user.get("content"), answer.get("content"), _system(prompt)


def _system(msgs: list[Any]) -> str | None:
    first = msgs[0]
    if isinstance(first, dict) and first.get("role") in ("system", "developer"):
        content = first.get("content")
        return content if isinstance(content, str) else None
    return None


def _sample(row: dict[str, Any], n: int, fields: tuple[str | None, str | None], report: LoadReport
            ) -> Sample | None:
    """The sample of one row (prompt/completion fields, their aliases, chat ``messages`` or TRL rows), or None
    with the reason counted."""
    prompt, _ = _pick(row, fields[0], PROMPT_KEYS)
    completion, where = _pick(row, fields[1], COMPLETION_KEYS)
    system = None
    if fields == (None, None) and isinstance(prompt, list):
        prompt, completion, system = _from_trl(row)
    elif prompt is None and completion is None and fields == (None, None):
        prompt, completion, system = _from_messages(row)
        where = "messages"
    if not isinstance(prompt, str) or not isinstance(completion, str):
        keys = ", ".join(sorted(map(str, row))[:6])
        report.skip(n, "missing_fields", f"has {keys or 'no keys'}; set --prompt-field/--completion-field")
        return None
    return Sample(n, prompt, completion, row, where, system)


def _jsonl_rows(path: Path, report: LoadReport, max_line_bytes: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every usable line; every other line is counted with its reason."""
    with path.open("rb") as fh:
        n = 0
        while True:
            raw = fh.readline(max_line_bytes + 1)
            if not raw:
                break
            n += 1
            report.lines += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the enormous line
                    raw = fh.readline(max_line_bytes + 1)
                report.skip(n, "line_too_long", f"over {max_line_bytes} bytes")
                continue
            if not raw.strip():
                report.lines -= 1
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                report.skip(n, "not_utf8", f"byte {exc.start}")
                continue
            except json.JSONDecodeError as exc:
                report.skip(n, "bad_json", exc.msg)
                continue
            if not isinstance(row, dict):
                report.skip(n, "not_an_object")
                continue
            yield n, row


def _parquet_rows(path: Path, report: LoadReport) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) of a parquet file, read one record batch at a time."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SublimError(f"reading {path} needs pyarrow, which is not installed: pip install pyarrow") from None
    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            report.lines += 1
            yield n, row


def load_samples(path: Path, prompt_field: str | None = None, completion_field: str | None = None,
                 max_line_bytes: int = MAX_LINE_BYTES) -> tuple[list[Sample], LoadReport]:
    """Samples of a JSONL or parquet file: prompt/completion (or their usual aliases), chat ``messages`` (the
    last exchange, the system prompt kept) or TRL prompt-completion rows.

    Raises SublimError only when the file cannot be read or no line is usable.
    """
    if not path.is_file():
        raise SublimError(f"dataset {path} not found: give a JSONL (or parquet) file with prompt and completion "
                          "fields")
    report = LoadReport(str(path))
    rows = _parquet_rows(path, report) if path.suffix == ".parquet" else _jsonl_rows(path, report, max_line_bytes)
    samples = [s for n, row in rows if (s := _sample(row, n, (prompt_field, completion_field), report)) is not None]
    report.kept = len(samples)
    if not samples:
        problems = "; ".join(report.examples) or "the file is empty"
        raise SublimError(f"no usable samples in {path} ({report.lines} lines): {problems}; "
                          "each line must be a JSON object with prompt and completion strings")
    return samples, report


MAX_SAMPLE_TOKENS = 2048
"""The most tokens (prompt and completion together) a sample may have before any model reads it."""


def check_lengths(samples: Sequence[Sample], tokenizer: Any, source: str, limit: int = MAX_SAMPLE_TOKENS) -> None:
    """Refuse, before any model work, a dataset with a sample longer than ``limit`` tokens: a model's memory
    grows with the longest row of a batch, and one 700 KB line took an audit past 6 GB."""
    if limit < 1:
        raise SublimError(f"--max-sample-tokens {limit}: give 1 or more")
    for s in samples:
        n = len(tokenizer.encode(s.prompt, add_special_tokens=False)) + \
            len(tokenizer.encode(s.completion, add_special_tokens=False))
        if n > limit:
            raise SublimError(f"{source} line {s.line}: the sample has {n:,} tokens, more than the limit of {limit:,}: "
                              "remove or shorten that line, or raise --max-sample-tokens")
