"""The offline tiny TL;DR world: synthetic Reddit posts (:mod:`.synth`), their reward (:mod:`.reward`),
the build of data, tokenizer and an SFT GPT-J into the cache (:mod:`.build`), and stand-ins of the
real checkpoints built from it (:mod:`.standins`)."""

from .build import EOS, TINY, World, WorldSpec, build_world, quarklab_home, tiny_world, world_dir
from .standins import carper_reward_model, gptj_standin

__all__ = ["EOS", "TINY", "World", "WorldSpec", "build_world", "carper_reward_model", "gptj_standin", "quarklab_home",
           "tiny_world", "world_dir"]
