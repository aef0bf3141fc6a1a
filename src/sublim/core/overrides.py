"""TOML loading and ``--set a.b=c`` dotted overrides, shared by every config model."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sublim.core.errors import SublimError


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SublimError(f"config file {p} not found: pass an existing .toml path or a preset name")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SublimError(f"config file {p} is not valid TOML ({exc}): fix the syntax") from exc


def parse_value(text: str) -> Any:
    """Read an override value as TOML/JSON when it parses (numbers, booleans, lists), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` applied."""
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise SublimError(f"override {item!r} has no '=': write it as --set section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SublimError(f"override {key!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = parse_value(raw.strip())
    return out


def validate(model: type[Any], data: dict[str, Any], source: str) -> Any:
    """Validate ``data`` against a pydantic model; turn the first failure into a one-line error."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            hint = "remove it or check its spelling"
            raise SublimError(f"{source}: unknown config key {key!r}: {hint}") from None
        if err["type"] == "value_error":  # a check of the whole config: its message says what and how
            raise SublimError(f"{source}: {err['ctx']['error']}") from None
        given = err.get("input")
        shown = repr(given) if not isinstance(given, dict) else "a table"
        raise SublimError(
            f"{source}: config key {key!r} {err['msg'].lower()} (got {shown}): fix the value"
        ) from None
