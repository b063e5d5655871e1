"""The offline tiny TL;DR world: synthetic Reddit posts (:mod:`.synth`), their reward (:mod:`.reward`), and the
build of data, tokenizer and an SFT GPT-J into the cache (:mod:`.build`). It answers the name ``"tiny-tldr"``
(:data:`quarklab.names.TINY`) wherever a model, dataset or reward is named: importing this package registers it.
Stand-ins of the real checkpoints built from it are in :mod:`quarklab.testing`."""

from ..names import TINY, register
from .build import EOS, World, WorldSpec, build_world, quarklab_home, tiny_world, world_dir

register(TINY, tiny_world)

__all__ = ["EOS", "TINY", "World", "WorldSpec", "build_world", "quarklab_home", "tiny_world", "world_dir"]
