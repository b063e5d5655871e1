"""Local stand-ins of the real checkpoints (GPT-J 6B's layout, CarperAI's value-head reward model), built from the
tiny world in seconds: what the suite and the GPU rehearsal load through the same code paths as the real ones.
Nothing in the library imports this package."""

from .standins import cache_repo, carper_reward_model, gptj_standin, tldr_gptj_hub_cache

__all__ = ["cache_repo", "carper_reward_model", "gptj_standin", "tldr_gptj_hub_cache"]
