"""`docs/reference/hooks.md`: the pluggy hookspecs, the registry they receive, and the public
members of the plugin base classes, with signatures and docstrings, read from the code."""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from typing import cast

import cas_spec
from cas_spec.core import hookspecs
from cas_spec.core.adapter import ModelAdapter
from cas_spec.core.interfaces import DraftStrategy, Plugin, Scheduler, Verifier
from cas_spec.core.plugins import ALLOW_LIST_ENV, ENTRY_POINT_GROUP
from cas_spec.core.registry import Registry
from cas_spec.docsgen import REGENERATE

BASE_CLASSES = (Plugin, DraftStrategy, Scheduler, Verifier, ModelAdapter)


def hookspecs_in_order() -> list:
    """The hookspec functions of `cas_spec.core.hookspecs`, in source order."""
    return [f for f in vars(hookspecs).values() if callable(f) and hasattr(f, "cas_spec_spec")]


def public_members(cls: type) -> list[str]:
    """Methods and properties `cls` itself defines (not inherited), public or `__init__`, in source order."""
    names = []
    for name, value in vars(cls).items():
        if name != "__init__" and name.startswith("_"):
            continue
        if isinstance(value, property | classmethod | staticmethod) or inspect.isfunction(value):
            names.append(name)
    return names


def class_attributes(cls: type) -> list[tuple[str, str, str]]:
    """(name, value, `#:` comment) of the public class attributes `cls` itself declares."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    body = cast(ast.ClassDef, ast.parse(source).body[0]).body
    out: list[tuple[str, str, str]] = []
    previous: tuple[int | None, str] = (None, "")  # a `#:` comment also covers the assignments right below it
    for node in body:
        target = (
            node.target
            if isinstance(node, ast.AnnAssign)
            else (node.targets[0] if isinstance(node, ast.Assign) else None)
        )
        if not isinstance(target, ast.Name) or target.id.startswith("_"):
            continue
        comment: list[str] = []
        row = node.lineno - 2
        while row >= 0 and lines[row].strip().startswith("#:"):
            comment.insert(0, lines[row].strip()[2:].strip())
            row -= 1
        if not comment and previous[0] == node.lineno - 1:
            comment = [previous[1]]
        previous = (node.end_lineno, " ".join(comment))
        value = getattr(cls, target.id, None)
        shown = (
            "required in subclasses"
            if target.id not in vars(cls)
            else (f"`{value.__name__}`" if isinstance(value, type) else f"`{value!r}`")
        )
        out.append((target.id, shown, " ".join(comment)))
    return out


def _signature(function: Callable[..., object], name: str, bound: bool = False) -> str:
    """`name(a: int, b: str = 'x') -> T`, annotations as written in the source; `bound` drops
    the first parameter (self or cls)."""
    signature = inspect.signature(function)
    params = list(signature.parameters.values())[1 if bound else 0 :]

    def annotation(value: object) -> str:
        return value if isinstance(value, str) else inspect.formatannotation(value)

    parts = []
    for param in params:
        text = param.name
        if param.annotation is not param.empty:
            text += f": {annotation(param.annotation)}"
        if param.default is not param.empty:
            text += f" = {param.default!r}" if param.annotation is not param.empty else f"={param.default!r}"
        parts.append(text)
    returns = signature.return_annotation
    arrow = f" -> {annotation(returns)}" if returns is not signature.empty else ""
    return f"{name}({', '.join(parts)}){arrow}"


def _doc(function: object) -> str:
    """The function's own docstring (never one inherited from a base class)."""
    return inspect.cleandoc(function.__doc__) if function.__doc__ else ""


def _qualified(cls: type) -> str:
    """Where a plugin author imports `cls` from: the public plugin API when it is there."""
    if cls.__name__ in cas_spec.plugin.__all__:
        return f"cas_spec.plugin.{cls.__name__}"
    return f"{cls.__module__}.{cls.__name__}"


def _member(cls: type, name: str) -> list[str]:
    value = vars(cls)[name]
    if isinstance(value, property):
        assert value.fget is not None, f"{cls.__name__}.{name} is a property without a getter"
        returns = inspect.signature(value.fget).return_annotation
        head = f"{name} -> {returns}" if returns is not inspect.Signature.empty else name
        kind, doc = "property", _doc(value.fget)
    else:
        function = value.__func__ if isinstance(value, classmethod | staticmethod) else value
        head = _signature(
            function, cls.__name__ if name == "__init__" else name, bound=not isinstance(value, staticmethod)
        )
        kind = (
            "classmethod"
            if isinstance(value, classmethod)
            else ("abstract method" if getattr(function, "__isabstractmethod__", False) else "method")
        )
        doc = _doc(function)
    if name == "__init__":
        kind = "constructor"
    lines = ["", f"#### `{cls.__name__}.{name}`", "", f"*{kind}* `{head}`"]
    if doc:
        lines += ["", doc]
    return lines


def render() -> str:
    out = [
        "# Hook reference",
        "",
        f"<!-- Generated by `{REGENERATE}` from cas_spec.core.hookspecs and the plugin base classes; "
        "edit their docstrings, not this page. -->",
        "",
        "A plugin is a module (or any object) whose functions, marked `@hookimpl` (from `cas_spec.plugin`), are named "
        "after the hooks below. An installed package exposes it as an entry point of group "
        f"`{ENTRY_POINT_GROUP}`:",
        "",
        "```toml",
        f"[project.entry-points.{ENTRY_POINT_GROUP}]",
        'my_plugin = "my_package.plugin"',
        "```",
        "",
        "The built-in strategies, schedulers, verifiers and adapters register through the same hooks. "
        f"`{ALLOW_LIST_ENV}=name,name` limits which entry points load (empty: none); under pytest "
        "entry points load only with `CAS_SPEC_LOAD_ENTRYPOINTS=1`. A plugin that fails to import, "
        "uses an unknown hook or raises while registering is reported by `cas-spec plugins` and "
        "registers nothing; the others keep working. The [plugin tutorial](../plugins/tutorial.md) "
        "builds one step by step.",
        "",
        "## Hooks",
    ]
    for spec in hookspecs_in_order():
        out += ["", f"### `{_signature(spec, spec.__name__)}`", "", _doc(spec)]
    out += ["", "## The registry", "", inspect.getdoc(Registry) or "", ""]
    out += _member(Registry, "add")[1:]
    out += ["", "## Base classes", "", inspect.getdoc(cas_spec.core.interfaces) or ""]
    for cls in BASE_CLASSES:
        bases = ", ".join(f"`{b.__name__}`" for b in cls.__bases__ if b is not object)
        out += [
            "",
            f"### `{cls.__name__}`",
            "",
            f"`{_qualified(cls)}`, a subclass of {bases}.",
            "",
            inspect.getdoc(cls) or "",
        ]
        attributes = class_attributes(cls)
        if attributes:
            out += ["", "| class attribute | value | meaning |", "| --- | --- | --- |"]
            out += [f"| `{name}` | {value} | {comment or '—'} |" for name, value, comment in attributes]
        for name in public_members(cls):
            out += _member(cls, name)
    return "\n".join(out) + "\n"
