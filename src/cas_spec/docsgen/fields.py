"""Render one pydantic model's fields as a Markdown table: name, type, default, constraints,
description. Types and defaults are written as they are spelled in YAML (`null`, `true`, lists)."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any, Literal, cast, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null", Any: "any"}
Link = Callable[[type[BaseModel]], str]  # the Markdown link to a nested model
_BOUNDS = (
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.Lt, "lt", "<"),
)


def models_in(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models an annotation names, directly or inside lists, mappings and optionals."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in models_in(arg)]


def nested_models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """The models used by `model`'s fields, in field order, each once."""
    found: list[type[BaseModel]] = []
    for field in model.model_fields.values():
        found += [m for m in models_in(field.annotation) if m not in found]
    return found


def type_name(annotation: object, link: Link | None = None) -> str:
    """`int or null`, `list of string`, `one of auto, stock`; `link(model)` names a nested model."""
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{v if isinstance(v, str) else yaml_value(v)}`" for v in get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(arg, link) for arg in get_args(annotation))
    if origin in (list, tuple, set, frozenset):
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        return "list of " + (type_name(args[0], link) if len(set(args)) == 1 else "values")
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return link(annotation) if link else annotation.__name__
    if annotation in _NAMES:
        return _NAMES[annotation]
    return getattr(annotation, "__name__", str(annotation))


def constraints(field: FieldInfo) -> str:
    """`≥ 1`, `> 0.0, ≤ 1.0`, or '' when unconstrained."""
    parts = []
    for item in field.metadata:
        for cls, attr, symbol in _BOUNDS:
            if isinstance(item, cls):
                parts.append(f"{symbol} {getattr(item, attr)}")
        if isinstance(item, annotated_types.MinLen):
            parts.append(f"length ≥ {item.min_length}")
        if isinstance(item, annotated_types.MaxLen):
            parts.append(f"length ≤ {item.max_length}")
    return ", ".join(parts)


def _plain(value: object) -> object:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def yaml_value(value: object) -> str:
    """A value as YAML flow text: `null`, `true`, `0.7`, `[0.5, 0.8]`, `{linear: auto}`."""
    text = yaml.safe_dump(_plain(value), default_flow_style=True, sort_keys=False, width=10_000)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def default(field: FieldInfo) -> str | None:
    """The field's default as YAML, or None when the field is required."""
    if field.default_factory is not None:
        return yaml_value(cast(Callable[[], object], field.default_factory)())  # a factory without arguments
    if field.default is PydanticUndefined:
        return None
    return yaml_value(field.default)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def field_table(model: type[BaseModel], link: Link | None = None) -> str:
    """A Markdown table of `model`'s fields (every field, inherited ones included)."""
    rows = ["| field | type | default | constraints | description |", "| --- | --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        value = default(field)
        rows.append(
            "| "
            + " | ".join(
                _cell(cell)
                for cell in (
                    f"`{name}`",
                    type_name(field.annotation, link),
                    "required" if value is None else f"`{value}`",
                    constraints(field),
                    field.description or "",
                )
            )
            + " |"
        )
    return "\n".join(rows)
