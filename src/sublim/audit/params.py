"""A plug-in's own parameters (a detector's, a defence's): a pydantic model of documented fields with defaults,
where an unknown key is refused by name. The registry builds it from the config's table for that plug-in."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from sublim.core.config import Section


class Params(Section):
    """A plug-in's parameters (subclass it; every field documented, with its default)."""


class NoParams(Params):
    """For a plug-in without parameters."""


def build_params(model: type[Params], given: dict[str, Any], where: str) -> Params:
    """``given`` validated against ``model``, or a one-line ValueError naming the key at ``where`` (a dotted
    config path, e.g. ``detector.divergence_shift``), what is wrong and how to fix it."""
    try:
        return model.model_validate(given)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join([where, *(str(p) for p in err["loc"])])
        if err["type"] == "extra_forbidden":
            known = ", ".join(model.model_fields) or "none"
            raise ValueError(f"unknown key {key!r}: remove it or check its spelling (its keys: {known})") from None
        got = err.get("input")
        shown = repr(got) if not isinstance(got, dict) else "a table"
        raise ValueError(f"{key} {err['msg'].lower()} (got {shown}): fix the value") from None
