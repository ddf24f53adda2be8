"""What every wire package's pydantic request models share: a strict base that accepts unknown fields, and
walks over a parsed body for its free-form values and for the fields no model defines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict

from daemon.chat.limits import MAX_VALUE_DEPTH, json_depth

Path = tuple[str | int, ...]  # field names and list positions, from the body's top


class WireModel(BaseModel):
    # Strict: a number is never a string or a boolean here, nor NaN or Infinity. Unknown fields are kept
    # (clients send beta fields freely) and listed by `unknown_fields`.
    model_config = ConfigDict(extra="allow", frozen=True, strict=True, allow_inf_nan=False)


def models(root: BaseModel) -> Iterator[tuple[Path, BaseModel]]:
    """(path, model) for `root` and every model within it, depth first in order."""
    pending: list[tuple[Path, BaseModel]] = [((), root)]
    while pending:
        path, model = pending.pop()
        yield path, model
        inner = []
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                inner.append(((*path, name), value))
            elif isinstance(value, list):
                inner += [
                    ((*path, name, i), item) for i, item in enumerate(value) if isinstance(item, BaseModel)
                ]
        pending += reversed(inner)


def unknown_fields(root: BaseModel) -> list[Path]:
    """The path of every field the client sent that the models do not define."""
    return [(*path, name) for path, model in models(root) for name in model.model_extra or {}]


def value_problem(root: BaseModel) -> tuple[Path, str] | None:
    """The first free-form JSON value in `root` (a field typed as any JSON, or an unknown field) that nests
    deeper than `MAX_VALUE_DEPTH` or holds NaN or Infinity: its path and what is wrong with it."""
    for path, model in models(root):
        for name, value in _free_values(model):
            try:
                depth = json_depth(value, MAX_VALUE_DEPTH)
            except ValueError as error:
                return (*path, name), str(error)
            if depth > MAX_VALUE_DEPTH:
                return (*path, name), f"nests more than {MAX_VALUE_DEPTH} levels deep (the limit for a value)"
    return None


def _free_values(model: BaseModel) -> Iterator[tuple[str, Any]]:
    yield from (model.model_extra or {}).items()
    for name, info in type(model).model_fields.items():
        if isinstance(value := getattr(model, name), dict):
            yield info.alias or name, value
