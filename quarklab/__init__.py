"""quarklab: a research toolkit for Quark-style alignment with reward-quantile control tokens.

The public API, as notebooks use it (``import quarklab as ql``)::

    world = ql.tiny_world()                          # the offline TL;DR world (built on first need)
    policy = ql.load_policy(world.policy)            # or a hub id, e.g. CarperAI/openai_summarize_tldr_sft
    tokenizer = ql.load_tokenizer(world.policy)
    prompts = ql.load_prompts("tiny-tldr", "test")   # or a .jsonl/.csv/.parquet file, or a hub dataset id
    reward = ql.load_reward("tiny-tldr")             # or a classifier, a value-head RM, any callable
    samples = ql.sample(policy, tokenizer, prompts, n=4)
"""

from .data import load_prompts
from .errors import QuarkError
from .models import load_policy, load_tokenizer, position_ids_from_mask, resolve_device
from .rewards import CheckedReward, RewardFn, load_reward
from .sampling import SamplingParams, sample
from .world import World, WorldSpec, build_world, quarklab_home, tiny_world

__version__ = "0.1.0"

__all__ = [
    "CheckedReward", "QuarkError", "RewardFn", "SamplingParams", "World", "WorldSpec", "build_world",
    "load_policy", "load_prompts", "load_reward", "load_tokenizer", "position_ids_from_mask",
    "quarklab_home", "resolve_device", "sample", "tiny_world",
]
