"""`PluginContract`: the checks every plugin contract runs, whatever the plugin's kind. Plugin
authors subclass `StrategyContract` or `SchedulerContract` (`cas_spec.testing.contracts`), which
say how a plugin of their kind is put into a pipeline."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from cas_spec.core.config import load_config
from cas_spec.plugin import ConfigError, DraftStrategy, Plugins, Scheduler
from cas_spec.testing import exact, harness, models, stats
from cas_spec.testing.models import ARCHITECTURES, repetitive_prompt, tiny_model

if TYPE_CHECKING:
    import torch

    from cas_spec.core.types import GenerationStats
    from cas_spec.pipeline import Pipeline

AUTOREGRESSIVE = {"scheduler": {"kind": "autoregressive"}, "calibration": "off"}
ROW_ATOL = 1e-4  # float32 logits over a tree against plain forwards, as probabilities


class PluginContract:
    """What both contracts share. Class attributes (override in your subclass):

    plugin_name: the name your plugin registers. options: valid options (dict).
    invalid_options: option dicts that validation must reject, each naming a field.
    plugin: a plugin object (module or instance with hook implementations) to register, for a
        plugin not installed as an entry point; None = built-ins and installed entry points.
    architectures: the tiny models checked for greedy identity and, one fault each, no leakage.
    sampling_architectures: the architectures of the sampling checks' peaked models
        (`models.sampling_model`); each check runs once per architecture.
    slow_sampling_architectures: those of the slow end-to-end χ² check (None: the same).
    max_new_tokens: tokens generated per prompt in the greedy and leakage checks.
    expects_drafts: True: the pipeline must put drafted tokens into trees (or the checks would
        prove nothing); False: it must never draft (a scheduler such as `autoregressive`).
    sampling: the pipeline's sampling section in the sampling checks (temperature > 0).
    sampling_prompt: prompt of the sampling checks (ids below the sampling model's 10).
    sampling_runs, sampling_length: runs and output tokens of the exact-law check.
    honesty_runs, honesty_tokens: generations whose drafts are checked against their q.
    slow_sampling_runs: runs of the slow end-to-end χ² check. alpha: its false-alarm rate.
    faults: (step, model forward) where the leakage check makes a draft fail, taken in turn by
        the architectures (each architecture gets one, and each fault runs at least once).
    steep_slope, warm_runs (schedulers): the verification cost per node, and the generations run
        first, in the steep-cost sampling check.
    """

    kind: ClassVar[str] = ""
    option_location: ClassVar[str] = ""
    plugin_name: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    invalid_options: ClassVar[Sequence[dict[str, Any]]] = ()
    plugin: ClassVar[object | None] = None
    architectures: ClassVar[Sequence[str]] = ARCHITECTURES
    sampling_architectures: ClassVar[Sequence[str]] = ("llama",)
    slow_sampling_architectures: ClassVar[Sequence[str] | None] = None
    max_new_tokens: ClassVar[int] = 32
    expects_drafts: ClassVar[bool] = True
    sampling: ClassVar[dict[str, Any]] = {"temperature": 1.0}
    sampling_prompt: ClassVar[Sequence[int]] = (5, 7, 5, 7, 5)
    sampling_runs: ClassVar[int] = 300
    sampling_length: ClassVar[int] = 3
    honesty_runs: ClassVar[int] = 40
    honesty_tokens: ClassVar[int] = 16
    slow_sampling_runs: ClassVar[int] = 3000
    alpha: ClassVar[float] = 1e-3
    faults: ClassVar[Sequence[tuple[int, int]]] = ((1, 1), (3, 2))
    steep_slope: ClassVar[float] = 0.2
    warm_runs: ClassVar[int] = 40

    # -- hooks ---------------------------------------------------------------------------------
    def prompts(self) -> list[list[int]]:
        """Token-id prompts of the greedy and leakage checks (ids below 96): repetitive, so
        lookup and model drafters both find something to propose."""
        return [repetitive_prompt(seed, 96) for seed in (0, 1)]

    def options_for(self, architecture: str) -> dict[str, Any]:
        """The plugin's options on `architecture`'s tiny model (default: `options`)."""
        return dict(self.options)

    def model(self, architecture: str):
        """The tiny model of `architecture` (4 layers, vocabulary 96)."""
        return tiny_model(architecture, seed=1)

    def sampling_model(self, architecture: str = "llama"):
        """A peaky 4-layer model of `architecture` with a 10-token vocabulary
        (`models.sampling_model`; for "llama", `models.sampling_llama`)."""
        return models.sampling_model(architecture)

    def pipeline_config(self, architecture: str) -> dict[str, Any]:
        raise NotImplementedError

    # -- helpers -------------------------------------------------------------------------------
    def plugins(self) -> Plugins:
        return harness.plugin_set(self.plugin_name, self.kind, () if self.plugin is None else (self.plugin,))

    def pipeline(self, model: torch.nn.Module, architecture: str, sampling: bool = False) -> Pipeline:
        config = self.pipeline_config(architecture)
        if sampling:
            config["sampling"] = dict(self.sampling)
        return harness.build_pipeline(config, model, self.plugins())

    def drafted(self, stats: GenerationStats) -> int:
        return sum(level.drafted for level in stats.levels.values())

    def point_mass_levels(self) -> set[str]:
        """Levels whose drafts must carry no q (strategies declaring `deterministic = True`)."""
        return set()

    def _check_drafted(self, drafted: int, where: str) -> None:
        if self.expects_drafts:
            assert drafted > 0, f"{where}: nothing was drafted, so nothing was checked; override prompts()"
        else:
            assert drafted == 0, f"{where}: {drafted} tokens were drafted although expects_drafts is False"

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "architecture" in metafunc.fixturenames:
            metafunc.parametrize("architecture", list(self.architectures))
        if "sampling_architecture" in metafunc.fixturenames:
            metafunc.parametrize("sampling_architecture", list(self.sampling_architectures))
        if "slow_sampling_architecture" in metafunc.fixturenames:
            slow = self.slow_sampling_architectures
            metafunc.parametrize(
                "slow_sampling_architecture", list(self.sampling_architectures if slow is None else slow)
            )
        if "fault" in metafunc.fixturenames:
            archs, faults = list(self.architectures), list(self.faults)
            cases = [(archs[i % len(archs)], *faults[i % len(faults)]) for i in range(max(len(archs), len(faults)))]
            metafunc.parametrize("fault", cases, ids=[f"{a}-step{s}-forward{f}" for a, s, f in cases])

    def _config_problems(self, options: dict[str, Any]) -> list[str]:
        config = self.pipeline_config(self.architectures[0])
        _set_options(config, self.kind, options)
        try:
            load_config(config, plugins=self.plugins())
        except ConfigError as exc:
            return exc.problems
        return []

    # -- (a) registration ------------------------------------------------------------------------
    def test_plugin_is_registered(self):
        """`plugin_name` is registered as a plugin of this kind, by a class whose `name` is
        `plugin_name`, with a pydantic `Options` model that forbids unknown keys."""
        assert self.plugin_name, f"set plugin_name on {type(self).__name__}"
        plugins = self.plugins()
        registry = plugins.registry(self.kind)
        assert self.plugin_name in registry, (
            f"{registry.unknown_message(self.plugin_name)}; broken plugins: {plugins.broken or 'none'}. Install "
            f"your package (entry point group 'cas_spec') or set `plugin = <your plugin object>`"
        )
        cls = registry.get(self.plugin_name)
        base = DraftStrategy if self.kind == "strategy" else Scheduler
        assert issubclass(cls, base), f"{cls.__name__} is not a {base.__name__}"
        assert cls.name == self.plugin_name, f"{cls.__name__}.name is {cls.name!r}, not {self.plugin_name!r}"
        assert cls.Options.model_config.get("extra") == "forbid", (
            f"{cls.__name__}.Options must set model_config = ConfigDict(extra='forbid')"
        )

    # -- (b) options -----------------------------------------------------------------------------------
    def test_options_validate(self):
        """`options` validate, in the plugin's `Options` and in a whole pipeline."""
        cls = self.plugins().registry(self.kind).get(self.plugin_name)
        for architecture in self.architectures:
            problems = self._config_problems(self.options_for(architecture))
            assert not problems, f"the declared options do not validate: {problems}"
        cls.Options.model_validate(self.options)

    def test_invalid_options_are_rejected(self):
        """Each of `invalid_options` fails pipeline validation with a problem that names one of its
        fields at `levels.0.options` / `scheduler.options`."""
        assert self.invalid_options, "declare invalid_options: option dicts your plugin must reject"
        for invalid in self.invalid_options:
            problems = self._config_problems({**self.options, **invalid})
            assert problems, f"invalid options {invalid} were accepted"
            named = [p for p in problems if p.startswith(self.option_location) and any(k in p for k in invalid)]
            assert named, f"the error for {invalid} names none of its fields: {problems}"

    def test_unknown_option_is_rejected(self):
        """A misspelt option is an error naming it, not silently ignored."""
        problems = self._config_problems({**self.options, "no_such_option": 1})
        assert any(p.startswith(f"{self.option_location}.no_such_option") for p in problems), (
            f"an unknown option was not reported: {problems or 'accepted'}"
        )

    # -- (c) greedy identity -------------------------------------------------------------------------
    def test_greedy_output_equals_autoregressive(self, architecture: str) -> None:
        """At temperature 0 the pipeline's output equals the autoregressive pipeline's, token for
        token, on `architecture`'s tiny model (Gemma 3's sliding window crossed), and it drafted."""
        model = self.model(architecture)
        plain = harness.build_pipeline(AUTOREGRESSIVE, model, self.plugins())
        pipe = self.pipeline(model, architecture)
        drafted = 0
        for prompt in self.prompts():
            want = plain.generate(list(prompt), max_new_tokens=self.max_new_tokens).token_ids
            got = pipe.generate(list(prompt), max_new_tokens=self.max_new_tokens)
            first = next(
                (i for i, (a, b) in enumerate(zip(got.token_ids, want)) if a != b), min(len(got.token_ids), len(want))
            )
            assert got.token_ids == want, (
                f"{architecture}: output differs from plain greedy decoding from token {first} on: "
                f"got {got.token_ids[first : first + 5]}, want {want[first : first + 5]}"
            )
            drafted += self.drafted(got.stats)
            window = getattr(model.config, "sliding_window", None) or 0
            if pipe.adapter.sliding_window_layers and window < pipe.adapter.context_length:
                assert len(prompt) + len(want) > window, "the prompt and output must cross the sliding window"
        self._check_drafted(drafted, architecture)

    # -- (d) sampling exactness --------------------------------------------------------------------------
    def _sampling_setup(self, architecture: str):
        model = self.sampling_model(architecture)
        pipe = self.pipeline(model, architecture, sampling=True)
        law = exact.target_law(
            model, self.sampling_prompt, self.sampling_length, pipe.adapter.eos_token_ids, pipe.sampling(seed=None)
        )
        return pipe, law, harness.Recorder(pipe)

    def test_sampled_law_equals_target(self, sampling_architecture: str) -> None:
        """The law of the first `sampling_length` sampled tokens equals the target's. Per run, the
        exact law given the first tree (`exact.first_step_law`): the target probabilities it was
        verified with must be a plain forward's, a tree of point masses must give the target's law
        exactly, and the mean over runs must pass a χ² test against it (`stats.chi2_mean_law`)."""
        self._check_sampled_law(*self._sampling_setup(sampling_architecture))

    def _check_sampled_law(self, pipe: Pipeline, law: exact.TargetLaw, recorder: harness.Recorder) -> None:
        laws, drafted = [], 0
        for seed in range(self.sampling_runs):
            first = recorder.first_step(pipe, self.sampling_prompt, self.sampling_length, seed)
            wrong = [
                (path, err) for path, err in exact.row_errors(first.tree, first.target_logits, law) if err > ROW_ATOL
            ]
            assert not wrong, f"run {seed}: target probabilities verified with differ from a plain forward: {wrong}"
            step = exact.first_step_law(first.tree, first.target_logits, law)
            if all(q is None for q in first.tree.draft_probs):
                tv = exact.total_variation(step, law.law)
                assert tv < ROW_ATOL, f"run {seed}: a tree of point masses gave a law {tv:.2e} (TV) off the target's"
            drafted += first.tree.size > 1
            laws.append(step)
        self._check_drafted(drafted, "the first steps")
        # the whole output, and the token at each position, whose cells hold more mass
        cells: dict[str, Callable[[Sequence[int]], Hashable] | None] = {"whole output": None}
        cells.update({f"token {i + 1}": _token_at(i) for i in range(self.sampling_length)})
        for name, cell in cells.items():
            stat, df = stats.chi2_mean_law(laws, law.law, cell)
            critical = stats.chi2_critical(df, self.alpha / len(cells))
            assert stat < critical, (
                f"the sampled law differs from the target's ({name}): χ² = {stat:.1f} on "
                f"{df} df over {self.sampling_runs} runs (critical {critical:.1f})"
            )

    def test_drafts_follow_their_draft_probs(self, sampling_architecture: str) -> None:
        """Every drafted token that carries a q (`draft_probs`) was drawn from that q: each q is a
        distribution with q(token) > 0, and over all drafts the tokens pass a χ² test against Σ q,
        per (depth, token) and per (depth, bin of the reported probability)
        (`stats.chi2_calibration`). Point-mass drafts (no q) are exact for any choice of tokens,
        and the only kind a strategy declaring `deterministic = True` may make."""
        pipe, _, recorder = self._sampling_setup(sampling_architecture)
        vocab = pipe.model.config.vocab_size
        point_mass_levels = self.point_mass_levels()
        for seed in range(self.honesty_runs):
            pipe.generate(list(self.sampling_prompt), max_new_tokens=self.honesty_tokens, seed=seed)
        draws = []
        self._check_drafted(sum(step.tree.size - 1 for step in recorder.steps), "sampling")
        for step in recorder.steps:
            for node in range(1, step.tree.size):
                q = step.tree.draft_probs[node]
                if q is None:
                    continue
                assert step.tree.levels[node] not in point_mass_levels, (
                    f"level '{step.tree.levels[node]}' declares deterministic = True but drafted a token with a q"
                )
                assert tuple(q.shape) == (vocab,), f"a node's draft_probs has shape {tuple(q.shape)}, not ({vocab},)"
                assert float(q.min()) >= 0 and abs(float(q.sum()) - 1.0) < 1e-4, "a node's q is not a distribution"
                draws.append((int(step.tree.tokens[node]), q.double(), int(step.tree.depths[node])))
        for name, (stat, df) in (
            ("token counts", stats.chi2_draft_tokens(draws)),
            ("calibration", stats.chi2_calibration(draws)),
        ):
            if df > 0:
                assert stat < stats.chi2_critical(df, self.alpha / 2), (
                    f"drafted tokens are not distributed as their draft_probs ({name}: χ² = {stat:.1f} on {df} df, "
                    f"{len(draws)} tokens)"
                )

    @pytest.mark.slow
    def test_sampled_outputs_match_target(self, slow_sampling_architecture: str) -> None:
        """End to end, seeded: `slow_sampling_runs` generations of `sampling_length` tokens pass a χ²
        goodness-of-fit test against the target's exact law."""
        pipe, law, _ = self._sampling_setup(slow_sampling_architecture)
        counts: dict = {}
        for seed in range(self.slow_sampling_runs):
            out = tuple(
                pipe.generate(list(self.sampling_prompt), max_new_tokens=self.sampling_length, seed=seed).token_ids
            )
            counts[out] = counts.get(out, 0) + 1
        stat, df = stats.chi2_goodness(counts, law.law, self.slow_sampling_runs)
        assert stat < stats.chi2_critical(df, self.alpha), f"sampled outputs: χ² = {stat:.1f} on {df} df"

    # -- (e) no leakage ----------------------------------------------------------------------------------
    def test_no_leakage_after_exception(self, fault: tuple[str, int, int]) -> None:
        """A draft that fails midway (`harness.Tripwire`: inside a model forward of step `step`)
        leaves the model as it was (parameters, modules, hooks, config: `harness.ModelSnapshot`)
        and the cache as a never-drafting run's; the pipeline then still decodes exactly."""
        architecture, step, forward = fault
        model = self.model(architecture)
        before = harness.ModelSnapshot.take(model)
        prompt = list(self.prompts()[0])
        want = (
            harness.build_pipeline(AUTOREGRESSIVE, model, self.plugins())
            .generate(prompt, max_new_tokens=self.max_new_tokens)
            .token_ids
        )
        pipe = self.pipeline(model, architecture)
        recorder = harness.Recorder(pipe)
        with harness.Tripwire(pipe, step=step, forward=forward) as wire:
            try:
                pipe.generate(prompt, max_new_tokens=self.max_new_tokens)
            except harness.InjectedFault:
                pass
        assert wire.fired, f"generation ended before step {step}: the fault never fired; lower `faults`"
        changed = before.differences(harness.ModelSnapshot.take(model))
        assert not changed, f"after a fault ({wire.fired}) the model is changed: {changed}"
        problems = harness.cache_problems(pipe, prompt + recorder.committed())
        assert not problems, f"after a fault ({wire.fired}) the cache is wrong: {problems}"
        again = pipe.generate(prompt, max_new_tokens=self.max_new_tokens).token_ids
        assert again == want, "after a fault the pipeline no longer decodes like plain greedy decoding"
        changed = before.differences(harness.ModelSnapshot.take(model))
        assert not changed, f"after a normal generation the model is changed: {changed}"


def _token_at(i: int) -> Callable[[Sequence[int]], Hashable]:
    return lambda seq: seq[i] if len(seq) > i else "end"


def _set_options(config: dict[str, Any], kind: str, options: dict[str, Any]) -> None:
    if kind == "strategy":
        config["levels"][0]["options"] = options
    else:
        config["scheduler"]["options"] = options


__all__ = ["AUTOREGRESSIVE", "ROW_ATOL", "PluginContract"]
