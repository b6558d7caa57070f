"""Negative controls: each contract test fails (AssertionError) for a plugin with the mistake it
exists to catch, while the built-ins pass it (tests/contracts). Broken plugins: broken_plugins.py."""

from __future__ import annotations

import pytest

from cas_spec.testing import SchedulerContract, StrategyContract
from tests.testing.broken_plugins import PLUGIN

EXIT1 = {"name": "exit1", "kind": "early_exit", "options": {"exit_layer": 1}}


def strategy(name: str, **attributes) -> StrategyContract:
    cls = type(f"Test_{name}", (StrategyContract,), {"plugin_name": name, "plugin": PLUGIN, **attributes})
    return cls()


def scheduler(name: str, **attributes) -> SchedulerContract:
    attributes = {"options": {"k": 4, "adaptive": False}, "levels": [EXIT1], **attributes}
    cls = type(f"Test_{name}", (SchedulerContract,), {"plugin_name": name, "plugin": PLUGIN, **attributes})
    return cls()


# -- (a), (b) registration and options -----------------------------------------------------------
def test_an_unregistered_name_fails_registration():
    with pytest.raises(AssertionError, match="unknown strategy 'no_such_strategy'"):
        strategy("no_such_strategy").test_plugin_is_registered()


def test_options_that_ignore_unknown_keys_fail_registration_and_the_unknown_option_check():
    lax = strategy("lax_strategy", options={"num_tokens": 3})
    with pytest.raises(AssertionError, match="extra='forbid'"):
        lax.test_plugin_is_registered()
    with pytest.raises(AssertionError, match="an unknown option was not reported"):
        lax.test_unknown_option_is_rejected()


def test_declared_options_that_do_not_validate_fail():
    with pytest.raises(AssertionError, match=r"levels.0.options.max_ngram"):
        strategy("prompt_lookup", options={"max_ngram": 0}).test_options_validate()


def test_invalid_options_that_are_accepted_fail():
    contract = strategy("prompt_lookup", invalid_options=[{"max_ngram": 0}, {"max_ngram": 5}])
    with pytest.raises(AssertionError, match=r"invalid options \{'max_ngram': 5\} were accepted"):
        contract.test_invalid_options_are_rejected()
    with pytest.raises(AssertionError, match="declare invalid_options"):
        strategy("prompt_lookup").test_invalid_options_are_rejected()


# -- (c) greedy identity ------------------------------------------------------------------------
def test_a_strategy_that_corrupts_the_committed_cache_fails_greedy_identity():
    with pytest.raises(AssertionError, match="output differs from plain greedy decoding"):
        strategy("cache_corrupter").test_greedy_output_equals_autoregressive("llama")


def test_a_scheduler_that_corrupts_the_committed_cache_fails_greedy_identity():
    with pytest.raises(AssertionError, match="output differs from plain greedy decoding"):
        scheduler("corrupting_chain").test_greedy_output_equals_autoregressive("gemma3")


def test_a_strategy_that_never_drafts_fails_as_vacuous():
    with pytest.raises(AssertionError, match="nothing was drafted"):
        strategy("never_drafts").test_greedy_output_equals_autoregressive("qwen2")


def test_a_strategy_that_ignores_max_tokens_fails_well_formedness():
    with pytest.raises(AssertionError, match="were asked for"):
        strategy("over_drafter").test_draft_results_are_well_formed("llama")


# -- (d) sampling exactness ----------------------------------------------------------------------
def test_lying_draft_probs_fail_the_draft_law_check():
    with pytest.raises(AssertionError, match="not distributed as their draft_probs"):
        strategy("argmax_liar", options={"exit_layer": 1}).test_drafts_follow_their_draft_probs("llama")
    with pytest.raises(AssertionError, match="not distributed as their draft_probs"):
        strategy("flattening_liar", options={"exit_layer": 1}).test_drafts_follow_their_draft_probs("llama")


def test_a_strategy_that_samples_while_declaring_itself_deterministic_fails():
    with pytest.raises(AssertionError, match="declares deterministic = True"):
        strategy("falsely_deterministic", options={"exit_layer": 1}).test_drafts_follow_their_draft_probs("llama")


def test_a_scheduler_declared_never_to_draft_that_drafts_fails():
    with pytest.raises(AssertionError, match="drafted although expects_drafts is False"):
        scheduler("chain", expects_drafts=False).test_greedy_output_equals_autoregressive("llama")


@pytest.mark.parametrize("name", ["argmax_liar", "flattening_liar"])
def test_lying_draft_probs_fail_the_sampled_law_check(name):
    with pytest.raises(AssertionError, match="sampled law differs from the target's"):
        strategy(name, options={"exit_layer": 1}).test_sampled_law_equals_target("llama")


@pytest.mark.parametrize("architecture", ["qwen3", "phi3"])
def test_the_sampling_models_of_qwen3_and_phi3_catch_a_lying_draft_too(architecture):
    with pytest.raises(AssertionError, match="sampled law differs from the target's"):
        strategy("argmax_liar", options={"exit_layer": 1}).test_sampled_law_equals_target(architecture)


def test_a_scheduler_that_selects_among_drafts_fails_the_sampled_law_check():
    with pytest.raises(AssertionError, match="sampled law differs from the target's"):
        scheduler("picky_chain").test_sampled_law_equals_target("llama")


def test_a_strategy_that_corrupts_the_cache_fails_the_sampled_law_check():
    """The probabilities verified with are compared with plain forwards node by node."""
    with pytest.raises(AssertionError, match="differ from a plain forward"):
        strategy("cache_corrupter").test_sampled_law_equals_target("llama")


@pytest.mark.slow
def test_lying_draft_probs_fail_the_end_to_end_chi_square():
    with pytest.raises(AssertionError, match="sampled outputs"):
        strategy("argmax_liar", options={"exit_layer": 1}).test_sampled_outputs_match_target("llama")


# -- (e) no leakage ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", [("llama", 1, 1), ("phi3", 1, 1), ("gemma3", 3, 2)])
def test_a_model_change_left_by_a_failing_draft_fails_the_leakage_check(fault):
    """Greedy identity holds for this strategy; only the fault path shows its mistake."""
    vandal = strategy("weight_vandal", options={"exit_layer": 1})
    vandal.test_greedy_output_equals_autoregressive(fault[0])
    with pytest.raises(AssertionError, match="model is changed: .*parameters or buffers changed"):
        vandal.test_no_leakage_after_exception(fault)


def test_a_leftover_hook_fails_the_leakage_check():
    leaver = strategy("hook_leaver")
    leaver.test_greedy_output_equals_autoregressive("mistral")
    with pytest.raises(AssertionError, match="hooks changed"):
        leaver.test_no_leakage_after_exception(("mistral", 3, 2))


def test_a_scheduler_that_leaves_a_module_swapped_fails_the_leakage_check():
    sticky = scheduler("sticky_chain")
    sticky.test_greedy_output_equals_autoregressive("llama")
    with pytest.raises(AssertionError, match="modules replaced"):
        sticky.test_no_leakage_after_exception(("llama", 3, 2))
