"""quarklab: a research toolkit for Quark-style alignment with reward-quantile control tokens.

The public API, as notebooks use it (``import quarklab as ql``)::

    policy = ql.load_policy("tiny-tldr")             # the offline world's SFT model (built on first need),
    tokenizer = ql.load_tokenizer("tiny-tldr")       # or a hub id, e.g. CarperAI/openai_summarize_tldr_sft
    prompts = ql.load_prompts("tiny-tldr", "test")   # or a .jsonl/.csv/.parquet file, or a hub dataset id
    reward = ql.load_reward("tiny-tldr")             # or a classifier, a value-head RM, any callable
    samples = ql.sample(policy, tokenizer, prompts, n=4)
"""

import importlib

from .config import PRESETS, QuarkConfig, preset
from .data import load_prompts
from .errors import QuarkError
from .evaluate import evaluate
from .hub import resolve_model
from .models import load_policy, load_tokenizer, position_ids_from_mask, resolve_device
from .quantiles import assign_quantiles, quantile_table, select_per_quantile
from .quark import final_table
from .quark import run as run_quark
from .rewards import CheckedReward, RewardFn, load_reward
from .sampling import SamplingParams, sample
from .tokens import add_quantile_tokens, quantile_token
from .world import World, WorldSpec, build_world, quarklab_home, tiny_world

__version__ = "0.1.0"

_SUBMODULES = {"analysis": ".analysis", "compare": ".compare", "config": ".config", "metrics": ".metrics",
               "notebooks": ".notebooks", "quantiles": ".quantiles", "runs": ".runs", "tldr": ".tldr", "tokens": ".tokens",
               "files": ".files", "paths": ".paths", "names": ".names",
               "figures": ".present.figures", "quantile_plots": ".present.quantile_plots",
               "run_plots": ".present.run_plots", "seeds": ".seeds", "seed_plots": ".present.seed_plots",
               "widgets": ".present.widgets", "html": ".present.html", "judge": ".judge"}
_LAZY = {"compare_tokens": ".compare", "comparison_html": ".present.html"}


def __getattr__(name):  # heavy or optional modules (matplotlib, ipywidgets) load on first use
    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name], __name__)
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'quarklab' has no attribute {name!r}")

__all__ = [
    "PRESETS", "QuarkConfig", "add_quantile_tokens", "assign_quantiles", "compare_tokens", "comparison_html",
    "evaluate", "final_table", "preset", "quantile_table", "quantile_token", "resolve_model", "run_quark",
    "select_per_quantile", "CheckedReward", "QuarkError", "RewardFn", "SamplingParams", "World", "WorldSpec", "build_world",
    "load_policy", "load_prompts", "load_reward", "load_tokenizer", "position_ids_from_mask",
    "quarklab_home", "resolve_device", "sample", "tiny_world",
]
