"""The offline tiny TL;DR world: synthetic Reddit posts (:mod:`.synth`), their reward (:mod:`.reward`),
and the build of data, tokenizer and an SFT GPT-J into the cache (:mod:`.build`)."""

from .build import EOS, TINY, World, WorldSpec, build_world, quarklab_home, tiny_world, world_dir

__all__ = ["EOS", "TINY", "World", "WorldSpec", "build_world", "quarklab_home", "tiny_world", "world_dir"]
