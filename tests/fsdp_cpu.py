"""``python -m quarklab.cli`` with accelerate's FSDP on CPU processes: a test-only override of accelerate.

accelerate adopts its FSDP plugin only for GPU-like distributed types: on CPU processes (MULTI_CPU, gloo) an
``accelerate launch --config_file configs/accelerate/fsdp.yaml`` runs plain DDP, and quarklab stops with one clear
error (tests/test_distributed.py checks it). This wrapper, used by the tests alone and never by the product, makes
accelerate's state take the FSDP plugin on CPU processes too, so that all the FSDP code quarklab owns (the check
of the policy's dtype, ``fully_shard`` through ``accelerator.prepare``, the full state-dict gather, the save and
every process's reload) runs on this machine::

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 tests/fsdp_cpu.py train ...
"""

import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        # both shared states: a later AcceleratorState() copies PartialState's distributed type over its own
        self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin


AcceleratorState.__init__ = _init_with_fsdp_on_cpu

if __name__ == "__main__":
    from quarklab.cli import main

    sys.exit(main(sys.argv[1:]))
