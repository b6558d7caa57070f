"""Pipelines in YAML, validated by pydantic.

A pipeline names the model, the scheduler, the levels (configured strategies) and how tokens are
sampled. `extends:` merges a base file (a path relative to the file, or a shipped preset name;
never a URL or a network path); `key.path=value` overrides set single values (list items by
index: `levels.0.options.k=5`). YAML is plain data: a tag that would construct a Python object
(`!!python/object`) is an error, and nothing is ever constructed or executed.
A bad pipeline fails once, listing every problem with its dotted location.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from cas_spec.core.errors import ConfigError
from cas_spec.core.plugins import get_plugins

if TYPE_CHECKING:
    from cas_spec.core.interfaces import Plugin
    from cas_spec.core.plugins import Plugins
    from cas_spec.core.registry import Registry

PRESETS_PACKAGE = "cas_spec.pipelines"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Plugged(_Strict):
    """A plugin's entry: its `kind` and its `options`, validated once, by `validate`, against the
    plugin's own `Options` model; `validated_options` is that instance, what the plugin receives."""

    _validated: BaseModel | None = PrivateAttr(default=None)
    if TYPE_CHECKING:  # fields each subclass declares (here they would come first in the schema)
        kind: str
        options: dict[str, Any]

    def validated_options(self, registry: Registry[Plugin]) -> BaseModel:
        """The validated options (validated now if this config did not come through `validate`)."""
        if self._validated is None:
            self._validated = registry.get(self.kind).Options.model_validate(self.options)
        return self._validated


class LevelConfig(_Plugged):
    """One level: a named, configured strategy."""

    name: str = Field(description="Unique name of the level, used by schedulers and statistics.")
    kind: str = Field(description="Registered strategy name, e.g. prompt_lookup.")
    options: dict[str, Any] = Field(default_factory=dict, description="The strategy's options.")


class SchedulerConfig(_Plugged):
    kind: str = Field(default="chain", description="Registered scheduler name.")
    options: dict[str, Any] = Field(default_factory=dict, description="The scheduler's options.")
    gate: bool = Field(
        default=False,
        description="Wrap the scheduler in the never-slower gate: decode plainly "
        "while measured speculation is slower than plain decoding, and probe again later.",
    )


class SamplingConfig(_Strict):
    temperature: float = Field(default=0.0, ge=0.0, description="0 = greedy decoding.")
    top_k: int | None = Field(default=None, ge=1, description="Keep only the k most likely tokens.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, description="Nucleus sampling threshold.")
    min_p: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Drop tokens less likely than min_p times the most likely one."
    )
    seed: int | None = Field(default=None, description="Seed that makes a sampled run reproducible.")


class KernelsConfig(_Strict):
    linear: Literal["auto", "stock"] = Field(
        default="auto", description="auto = per row count, the fastest linear kernel measured on this machine."
    )
    attention: Literal["auto", "stock"] = Field(
        default="auto", description="auto = SDPA without K/V copies for grouped-query attention."
    )


class PipelineConfig(_Strict):
    """A whole pipeline. Every field has a default; the default `chain` scheduler needs one level."""

    model: str = Field(default="smollm2-135m", description="Model alias or a local Hugging Face folder.")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto = cuda when available.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto = float32 on CPU, bfloat16 on CUDA."
    )
    threads: int | None = Field(default=1, ge=1, description="CPU threads for torch (null = leave as is).")
    chat: bool | None = Field(default=None, description="Apply the chat template; null = when the model has one.")
    max_new_tokens: int = Field(default=128, ge=1, description="Default generation budget.")
    calibration: Literal["auto", "off"] = Field(
        default="auto", description="auto = use the cached cost table, or measure a quick one on first use."
    )
    kernels: KernelsConfig = Field(
        default_factory=KernelsConfig, description="CPU float32 kernels (used only when calibrated)."
    )
    scheduler: SchedulerConfig = Field(
        default_factory=SchedulerConfig, description="Which scheduler decides who drafts what, and its options."
    )

    @field_validator("calibration", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        return "off" if value is False else value  # YAML reads a bare `off` as false

    levels: list[LevelConfig] = Field(
        default_factory=list, description="The drafting levels: named, configured strategies."
    )
    verifier: str = Field(default="auto", description="auto = greedy at temperature 0, sampling otherwise.")
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig, description="How tokens are chosen: greedy, or sampled like the target."
    )


# -- loading ----------------------------------------------------------------------------------


def preset_names() -> list[str]:
    from importlib import resources

    files = resources.files(PRESETS_PACKAGE).iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".yaml"))


def _preset_text(name: str) -> str:
    from importlib import resources

    return resources.files(PRESETS_PACKAGE).joinpath(f"{name}.yaml").read_text()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong, for a YAML error; a tag that would construct a Python object is named."""
    problem = getattr(exc, "problem", None) or str(exc)
    if isinstance(exc, yaml.constructor.ConstructorError):
        tag = re.search(r"tag '([^']*)'", problem)
        name = tag.group(1).replace("tag:yaml.org,2002:", "!!") if tag else "?"
        problem = (
            f"tag '{name}' is not allowed: a pipeline is plain data (mappings, lists, strings, numbers, booleans, null)"
        )
    return problem


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)  # never yaml.load: no tag may construct an object
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError([f"<yaml>{where}: {_yaml_problem(exc)}"], source) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"<root>: expected a mapping, got {type(data).__name__}"], source)
    return data


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _resolve_extends(data: dict[str, Any], base_dir: Path | None, source: str, seen: tuple[str, ...]) -> dict[str, Any]:
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(["extends: expected a file path or preset name"], source)
    if _is_remote(parent):
        raise ConfigError(
            [f"extends: '{parent}' is a URL or a network path; only local files and presets are allowed"], source
        )
    key = str((base_dir / parent).resolve()) if base_dir and (base_dir / parent).exists() else parent
    if key in seen:
        raise ConfigError([f"extends: cycle through '{parent}'"], source)
    if base_dir is not None and (base_dir / parent).exists():
        path = base_dir / parent
        parent_data = _parse_yaml(path.read_text(), str(path))
        parent_data = _resolve_extends(parent_data, path.parent, str(path), seen + (key,))
    elif parent in preset_names():
        parent_data = _resolve_extends(_parse_yaml(_preset_text(parent), parent), None, parent, seen + (key,))
    else:
        raise ConfigError(
            [f"extends: no file or preset named '{parent}'; presets: {', '.join(preset_names())}"], source
        )
    return _merge(parent_data, data)


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:")  # 'https:', 'file:', ...; not a drive letter 'C:'


def _is_remote(path: str) -> bool:
    """A URL (any scheme) or a network path (//host/share, \\\\host\\share)."""
    return "://" in path or path.startswith(("//", "\\\\", "/\\", "\\/")) or bool(_SCHEME.match(path))


def parse_override(item: str) -> tuple[list[str], Any]:
    """'a.b.0.c=value' → (['a', 'b', '0', 'c'], parsed YAML scalar)."""
    if "=" not in item:
        raise ConfigError([f"--set {item}: expected key.path=value"])
    path, _, raw = item.partition("=")
    keys = list(path.strip().split("."))
    if not all(keys):
        raise ConfigError([f"--set {item}: empty key in '{path}'"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError([f"--set {item}: {_yaml_problem(exc)}"]) from None
    except yaml.YAMLError:
        value = raw
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    for item in overrides:
        keys, value = parse_override(item)
        node: Any = data
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            where = ".".join(keys[: depth + 1])
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise ConfigError([f"--set {item}: '{where}' is not an index of a list of {len(node)}"])
                if last:
                    node[int(key)] = value
                else:
                    node = node[int(key)]
            elif isinstance(node, dict):
                if last:
                    node[key] = value
                else:
                    node = node.setdefault(key, {})
            else:
                raise ConfigError([f"--set {item}: '{'.'.join(keys[:depth])}' is not a mapping or list"])
    return data


def load_raw(source: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """A pipeline's data with `extends` resolved, from a preset name, a YAML path or a mapping."""
    if isinstance(source, Mapping):
        return _resolve_extends(dict(source), Path.cwd(), "<dict>", ()), "<dict>"
    text_source = str(source)
    path = Path(text_source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError([f"<file>: no such pipeline file '{text_source}'"], text_source)
        data = _parse_yaml(path.read_text(), text_source)
        return _resolve_extends(data, path.parent, text_source, (str(path.resolve()),)), text_source
    if text_source in preset_names():
        return _resolve_extends(
            _parse_yaml(_preset_text(text_source), text_source), None, text_source, (text_source,)
        ), text_source
    raise ConfigError([f"<pipeline>: no file or preset named '{text_source}'; presets: {', '.join(preset_names())}"])


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def validate(data: Mapping[str, Any], source: str | None = None, plugins: Plugins | None = None) -> PipelineConfig:
    """Validate structure, every plugin kind and its options (once: the validated options stay with
    the config, `validated_options`); raise one `ConfigError` listing all problems."""

    plugins = plugins or get_plugins()
    # Plugin kinds and options are checked on the raw data, wherever they are well-formed, so a
    # structural problem elsewhere does not hide them.
    validated: dict[str, BaseModel] = {}
    problems = _plugin_problems(data, plugins, validated)
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        structural = [f"{_location(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(structural + problems, source) from None

    names = [level.name for level in config.levels]
    for i, name in enumerate(names):
        if name in names[:i]:
            problems.append(f"levels.{i}.name: duplicate level name '{name}'")
    for i, level in enumerate(config.levels):
        level._validated = validated.get(f"levels.{i}")
    config.scheduler._validated = validated.get("scheduler")
    if not problems:
        options = config.scheduler.validated_options(plugins.schedulers)
        problems += plugins.schedulers.get(config.scheduler.kind).check_levels(options, names)
    if problems:
        raise ConfigError(problems, source)
    return config


def _plugin_problems(data: Mapping[str, Any], plugins: Plugins, validated: dict[str, BaseModel]) -> list[str]:
    """Unknown plugin kinds and invalid plugin options, as `location: message`; the options that
    validate go into `validated`, by location (`levels.0`, `scheduler`)."""
    problems: list[str] = []
    if not isinstance(data, Mapping):
        return problems

    def check(registry: Registry[Plugin], entry: Any, where: str, default_kind: str | None = None) -> None:
        if not isinstance(entry, Mapping):
            return
        kind, options = entry.get("kind", default_kind), entry.get("options", {})
        if isinstance(kind, str) and isinstance(options, Mapping):
            problems.extend(_check_plugin(registry, kind, dict(options), where, validated))

    levels = data.get("levels")
    if isinstance(levels, list):
        for i, level in enumerate(levels):
            check(plugins.strategies, level, f"levels.{i}")
    check(plugins.schedulers, data.get("scheduler", {}), "scheduler", SchedulerConfig().kind)
    verifier = data.get("verifier", "auto")
    if isinstance(verifier, str) and verifier != "auto" and verifier not in plugins.verifiers:
        problems.append(f"verifier: {plugins.verifiers.unknown_message(verifier)}")
    return problems


def _check_plugin(
    registry: Registry[Plugin], kind: str, options: dict[str, Any], where: str, validated: dict[str, BaseModel]
) -> list[str]:
    if kind not in registry:
        return [f"{where}.kind: {registry.unknown_message(kind)}"]
    try:
        validated[where] = registry.get(kind).Options.model_validate(options)
    except ValidationError as exc:
        return [
            f"{where}.options.{_location(e['loc'])}: {e['msg']}".replace(".options.<root>", ".options")
            for e in exc.errors()
        ]
    return []


def load_config(
    source: str | Path | Mapping[str, Any] = "default", overrides: Iterable[str] = (), plugins: Plugins | None = None
) -> PipelineConfig:
    """Load, merge, override and validate a pipeline."""
    data, name = load_raw(source)
    data = apply_overrides(data, overrides)
    return validate(data, name, plugins)
