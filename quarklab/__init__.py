"""quarklab: a research toolkit for Quark-style alignment with reward-quantile control tokens.

The public API, as notebooks use it (``import quarklab as ql``)::

    policy = ql.load_policy("tiny-tldr")             # the offline world's SFT model (built on first need),
    tokenizer = ql.load_tokenizer("tiny-tldr")       # or a hub id, e.g. CarperAI/openai_summarize_tldr_sft
    prompts = ql.load_prompts("tiny-tldr", "test")   # or a .jsonl/.csv/.parquet file, or a hub dataset id
    reward = ql.load_reward("tiny-tldr")             # or a classifier, a value-head RM, any callable
    samples = ql.sample(policy, tokenizer, prompts, n=4)

``import quarklab`` is light: every name and submodule below loads on first use (torch, transformers and
matplotlib only when something needs them), so ``quarklab --help`` answers at once. The one thing importing quarklab
does is register the offline world under the name ``"tiny-tldr"`` (:mod:`quarklab.names`).
"""

import importlib

from .errors import QuarkError
from .world import World, WorldSpec, build_world, quarklab_home, tiny_world  # registers "tiny-tldr"

__version__ = "0.1.0"

_SUBMODULES = {"analysis": ".analysis", "compare": ".compare", "config": ".config", "metrics": ".metrics",
               "notebooks": ".notebooks", "quantiles": ".quantiles", "runs": ".runs", "tasks": ".tasks", "tldr": ".tldr",
               "tokens": ".tokens",
               "files": ".files", "paths": ".paths", "names": ".names",
               "figures": ".present.figures", "quantile_plots": ".present.quantile_plots",
               "run_plots": ".present.run_plots", "seeds": ".seeds", "seed_plots": ".present.seed_plots",
               "widgets": ".present.widgets", "html": ".present.html", "judge": ".judge",
               "protocols": ".protocols"}
_NAMES = {  # public name -> (module, its name there)
    "PRESETS": (".config", "PRESETS"), "QuarkConfig": (".config", "QuarkConfig"), "preset": (".config", "preset"),
    "load_prompts": (".data", "load_prompts"), "evaluate": (".evaluation", "evaluate"),
    "resolve_model": (".hub", "resolve_model"), "load_policy": (".models", "load_policy"),
    "load_tokenizer": (".models", "load_tokenizer"), "position_ids_from_mask": (".models", "position_ids_from_mask"),
    "resolve_device": (".models", "resolve_device"), "assign_quantiles": (".quantiles", "assign_quantiles"),
    "quantile_table": (".quantiles", "quantile_table"), "select_per_quantile": (".quantiles", "select_per_quantile"),
    "final_table": (".quark", "final_table"), "run_quark": (".quark", "run"),
    "CheckedReward": (".rewards", "CheckedReward"), "RewardFn": (".rewards", "RewardFn"),
    "load_reward": (".rewards", "load_reward"), "SamplingParams": (".sampling", "SamplingParams"),
    "sample": (".sampling", "sample"), "add_quantile_tokens": (".tokens", "add_quantile_tokens"),
    "quantile_token": (".tokens", "quantile_token"), "compare_tokens": (".compare", "compare_tokens"),
    "comparison_html": (".present.html", "comparison_html"), "evaluate_policy": (".protocols", "evaluate_policy"),
    "get_task": (".tasks", "get_task"),
}


def __getattr__(name):  # everything but the world loads on first use
    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name], __name__)
    if name in _NAMES:
        module, attr = _NAMES[name]
        value = getattr(importlib.import_module(module, __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'quarklab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES) | set(_NAMES))


__all__ = ["QuarkError", "World", "WorldSpec", "build_world", "quarklab_home", "tiny_world", *sorted(_NAMES)]
