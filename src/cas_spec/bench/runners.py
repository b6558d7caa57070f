"""The methods a benchmark compares, each behind one interface.

- engine methods: any pipeline preset name or YAML file, run through `Pipeline.generate` on the
  shared model (a pipeline's own `model:`, `threads:` and `sampling.temperature` give way to
  `--model`, `--threads` and `--temperature`). `autoregressive` (plain decoding through the same
  engine) always runs: it is the reference for speed and for output identity.
- transformers baselines, run with `model.generate` on the same model object:
  `hf:greedy` (plain `generate`; it samples when the temperature is above 0),
  `hf:prompt_lookup` (`prompt_lookup_num_tokens=10`) and `hf:early_exit:E`
  (`assistant_early_exit=E`: the first E layers draft). `hf:greedy` runs whenever any `hf:` method
  does, as the reference of the transformers methods.

Every method receives the same prompt token ids (tokenised once, outside any timing) and the same
end-of-sequence ids. `Runner.prepare` does all set-up (tensors, seeds) and returns the call to
time, so the measured wall clock covers generation only. Engine methods also return their
`GenerationStats`; the engine decodes the new tokens to text inside `generate`, a cost of well
under a millisecond per call that the timing includes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from cas_spec.core.config import load_config, preset_names
from cas_spec.core.errors import UserError
from cas_spec.core.types import GenerationStats
from cas_spec.pipeline import Pipeline, load_pipeline

if TYPE_CHECKING:
    import torch
    from torch import nn

REFERENCE = "autoregressive"
HF_GREEDY = "hf:greedy"
HF_METHODS = {"hf:greedy": {}, "hf:prompt_lookup": {"prompt_lookup_num_tokens": 10}}
HF_EARLY_EXIT = "hf:early_exit:"
DEFAULT_METHODS = "default,hf:greedy,hf:prompt_lookup"
METHOD_SETS = {"ablation": ("ls", "vc", "hc", "vc-hc", "tr", "tr-vc", "dytc")}


class MethodError(UserError):
    """A `--methods` entry that names no preset, file or baseline, or is malformed."""


@dataclass(frozen=True)
class MethodSpec:
    name: str  # label in tables, records and plots
    kind: Literal["engine", "hf"]
    source: str = ""  # engine: preset name or YAML path
    hf_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Output:
    token_ids: list[int]
    stats: GenerationStats | None  # engine methods only


def _known() -> str:

    return (
        f"presets: {', '.join(preset_names())}; baselines: {', '.join(HF_METHODS)}, {HF_EARLY_EXIT}E; "
        f"method sets: {', '.join(METHOD_SETS)}; or a pipeline YAML file"
    )


def parse_method(entry: str) -> MethodSpec:
    """One `--methods` entry, validated without loading a model."""
    if entry.startswith("hf:"):
        if entry in HF_METHODS:
            return MethodSpec(entry, "hf", hf_kwargs=dict(HF_METHODS[entry]))
        if entry.startswith(HF_EARLY_EXIT):
            value = entry[len(HF_EARLY_EXIT) :]
            if not value.isdigit() or int(value) < 1:
                raise MethodError(
                    f"--methods entry '{entry}': the early-exit layer must be a positive integer, e.g. {HF_EARLY_EXIT}4"
                )
            return MethodSpec(f"{HF_EARLY_EXIT}{int(value)}", "hf", hf_kwargs={"assistant_early_exit": int(value)})
        raise MethodError(f"--methods entry '{entry}': unknown transformers baseline; {_known()}")

    try:
        load_config(entry)
    except UserError as exc:
        raise MethodError(f"--methods entry '{entry}': {exc}") from None
    path = Path(entry)
    name = path.stem if path.suffix in (".yaml", ".yml") or path.exists() else entry
    return MethodSpec(name, "engine", source=entry)


def method_set(name: str) -> list[str]:
    """The pipeline files of a shipped method set (`ablation`: CAS-Spec's scheduler ablation, seven
    schedulers over one hierarchy of drafters, in `cas_spec/bench/ablation/`), in the paper's order."""
    from importlib import resources

    folder = resources.files("cas_spec.bench").joinpath(name)
    return [str(folder.joinpath(f"{stem}.yaml")) for stem in METHOD_SETS[name]]


def parse_methods(text: str) -> list[MethodSpec]:
    """The methods of a comma list, `autoregressive` first and `hf:greedy` added when needed; a
    method set's name stands for its pipelines."""
    entries = [entry.strip() for entry in text.split(",")]
    if not all(entries):
        raise MethodError(f"--methods '{text}': empty entry")
    entries = [path for entry in entries for path in (method_set(entry) if entry in METHOD_SETS else [entry])]
    specs = [parse_method(REFERENCE)]
    for entry in entries:
        spec = parse_method(entry)
        if spec.source == REFERENCE:
            continue
        clash = next((s for s in specs if s.name == spec.name), None)
        if clash is not None:
            raise MethodError(
                f"--methods entry '{entry}': the name '{spec.name}' is taken by '{clash.source or clash.name}'"
            )
        specs.append(spec)
    if any(s.kind == "hf" for s in specs) and all(s.name != HF_GREEDY for s in specs):
        specs.insert(1, parse_method(HF_GREEDY))
    return specs


class Runner:
    """One method bound to the loaded model."""

    def __init__(self, spec: MethodSpec):
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    def prepare(
        self, ids: Sequence[int], max_new_tokens: int, temperature: float, seed: int | None
    ) -> Callable[[], Output]:
        raise NotImplementedError


class EngineRunner(Runner):
    def __init__(self, spec: MethodSpec, pipe: Pipeline):
        super().__init__(spec)
        self.pipe = pipe

    def prepare(
        self, ids: Sequence[int], max_new_tokens: int, temperature: float, seed: int | None
    ) -> Callable[[], Output]:
        ids = list(ids)

        def call() -> Output:
            result = self.pipe.generate(ids, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
            return Output(result.token_ids, result.stats)

        return call


class _Generates(Protocol):
    """A transformers causal LM, as `HFRunner` runs it."""

    device: torch.device

    def generate(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor: ...


class HFRunner(Runner):
    def __init__(self, spec: MethodSpec, model: _Generates, eos_token_ids: Sequence[int], pad_token_id: int | None):
        super().__init__(spec)
        self.model = model
        self.eos = list(eos_token_ids)
        self.pad = pad_token_id

    def prepare(
        self, ids: Sequence[int], max_new_tokens: int, temperature: float, seed: int | None
    ) -> Callable[[], Output]:
        import torch

        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.model.device)
        kwargs: dict[str, Any] = dict(
            self.spec.hf_kwargs,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            pad_token_id=self.pad,
        )
        if self.eos:
            kwargs["eos_token_id"] = self.eos
        if temperature > 0:  # plain sampling: no top-k or top-p, as in the engine's default
            kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        else:
            kwargs.update(do_sample=False)
        if temperature > 0 and seed is not None:
            torch.manual_seed(seed)

        def call() -> Output:
            with _quiet_transformers(), torch.inference_mode():
                out = self.model.generate(input_ids, **kwargs)
            return Output(out[0, input_ids.shape[1] :].tolist(), None)

        return call


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' per-call warnings (deprecations in assisted generation) would break the progress bar."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def build_runners(specs: Sequence[MethodSpec], model: nn.Module, tokenizer: Any, threads: int) -> list[Runner]:
    """Runners sharing one model: engine pipelines through `load_pipeline(model=, tokenizer=)`."""

    runners: list[Runner] = []
    pipes = []
    for spec in specs:
        if spec.kind == "engine":
            pipe = load_pipeline(spec.source, model=model, tokenizer=tokenizer, overrides=[f"threads={threads}"])
            pipes.append(pipe)
            runners.append(EngineRunner(spec, pipe))
    adapter = pipes[0].adapter
    layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None and adapter.eos_token_ids:
        pad = adapter.eos_token_ids[0]
    for spec in specs:
        if spec.kind == "hf":
            exit_layer = spec.hf_kwargs.get("assistant_early_exit")
            if exit_layer is not None and layers and exit_layer >= layers:
                raise MethodError(
                    f"--methods entry '{spec.name}': the model has {layers} layers; "
                    f"the early-exit layer must be below that"
                )
            runners.append(HFRunner(spec, cast(_Generates, model), adapter.eos_token_ids, pad))
    order = [s.name for s in specs]
    return sorted(runners, key=lambda r: order.index(r.name))
