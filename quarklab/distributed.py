"""Several processes on one run: ``accelerate launch ... quarklab train`` (DDP, DeepSpeed ZeRO, FSDP).

quarklab adds no distribution of its own: processes, devices and collectives are accelerate's
(over torch.distributed: gloo on CPU, NCCL on GPUs), and the training wrapper is whatever the
accelerate config names (DDP by default; a DeepSpeed or FSDP engine). This module is the little the
loop needs from them:

- **one writer**: the main process holds the run's lock and writes every file; the others read
  them after a barrier, and every decision that reads the run directory is the main process's,
  broadcast (:meth:`Dist.decide`), so no process ever acts on a half-seen folder;
- **sharding**: rank ``r`` of ``w`` takes items ``r, r + w, ...`` (:meth:`Dist.shard`) of the
  prompts it samples or evaluates, so all samples of one prompt are made on one process and local
  quantiles hold; the shards are gathered back (:meth:`Dist.gather`) in the order one process
  would have produced.

A single process (no ``accelerate launch``, or ``--num_processes 1``) imports nothing from
accelerate and runs exactly as before.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import pandas as pd
import torch

from .errors import QuarkError

ENGINES = ("deepspeed", "fsdp")
"""The engines that own the optimizer step and the fp32 master weights (and may shard the policy)."""


@dataclass
class Dist:
    """Where this process stands among the run's processes (one, by default)."""

    rank: int = 0
    world: int = 1
    accelerator: object = field(default=None, repr=False)  # accelerate.Accelerator under accelerate launch

    @classmethod
    def from_env(cls) -> "Dist":
        """The processes ``accelerate launch`` (or ``torchrun``) started; one process without it. Without CUDA
        (or with ``CUDA_VISIBLE_DEVICES=""``) they run on CPU and talk over gloo.

        The engine the launch asked for (:func:`launched_engine`) is the engine that runs, or this fails at once,
        before any model loads (:func:`check_engine`): a DeepSpeed or FSDP launch never trains as plain DDP."""
        asked, cuda, world = launched_engine(), torch.cuda.is_available(), int(os.environ.get("WORLD_SIZE", "1"))
        if _flag("ACCELERATE_USE_CPU") and world <= 1:
            raise QuarkError("accelerate launch --cpu (or use_cpu: true) starts one plain process, whatever its config's "
                             "distributed_type and num_processes say: for the config's engine on CPU processes drop "
                             "--cpu and set CUDA_VISIBLE_DEVICES='' (quarklab then runs them over gloo); for one "
                             "process, run quarklab train without accelerate launch")
        if world <= 1 and asked == "ddp":
            return cls()  # one process, no engine asked: nothing of accelerate's is needed
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        if asked == "deepspeed" and not cuda:
            # accelerate adopts DeepSpeed only when not told it is on CPU; DeepSpeed's CPU accelerator talks over gloo
            acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
        else:  # accelerate runs several CPU processes (gloo) only when told it is on CPU
            acc = Accelerator(cpu=not cuda)
        dist = cls(acc.process_index, acc.num_processes, acc)
        check_engine(asked, dist)
        if dist.engine == "deepspeed":
            # accelerate registers its DeepSpeed config with transformers, whose from_pretrained would then load
            # every model (the reference too) already partitioned by ZeRO-3's zero.Init; quarklab samples and
            # evaluates whole models outside the engine, and the engine partitions the policy it trains itself
            from transformers.integrations import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
        return dist

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        """This process's device (``cuda:LOCAL_RANK`` on GPUs), or None for one process (the config decides)."""
        return self.accelerator.device if self.accelerator is not None else None

    @property
    def engine(self) -> str:
        """"deepspeed" or "fsdp" when accelerate runs one (the engine then owns the optimizer and the fp32 master
        weights), else "ddp" (several processes) or "none"."""
        if self.accelerator is None:
            return "none"
        return {"DEEPSPEED": "deepspeed", "FSDP": "fsdp"}.get(self.distributed_type, "ddp")

    @property
    def has_engine(self) -> bool:
        """Whether a DeepSpeed or FSDP engine trains (:data:`ENGINES`)."""
        return self.engine in ENGINES

    @property
    def distributed_type(self) -> str:
        """accelerate's own name of what runs: "DEEPSPEED", "FSDP", "MULTI_GPU", "MULTI_CPU" or "NO"."""
        if self.accelerator is None:
            return "NO"
        return str(self.accelerator.distributed_type).rsplit(".", 1)[-1]

    @property
    def zero_stage(self) -> int | None:
        """The ZeRO stage DeepSpeed runs (None without DeepSpeed)."""
        plugin = self.accelerator.state.deepspeed_plugin if self.engine == "deepspeed" else None
        return None if plugin is None else int(plugin.zero_stage)

    def barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()

    def decide(self, fn):
        """``fn()`` as the main process computes it, on every process (``fn`` may read the run directory)."""
        if self.world == 1:
            return fn()
        from accelerate.utils import broadcast_object_list

        box = [fn() if self.is_main else None]
        return broadcast_object_list(box, from_process=0)[0]

    def gather(self, obj) -> list:
        """Every process's ``obj``, rank 0 first, on every process."""
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def shard(self, table: pd.DataFrame) -> pd.DataFrame:
        """This process's rows of ``table``: rows ``rank, rank + world, ...``."""
        return table.iloc[self.rank::self.world]

    def gather_rows(self, part: pd.DataFrame, order: pd.DataFrame, tokens: list | None = None) -> pd.DataFrame:
        """The shards of one table (one per process, made from :meth:`shard` of ``order``'s prompts), merged in
        the order one process makes them: by token (in ``tokens``' order, None = unconditioned), then prompt
        (``order``'s order), then sample."""
        if self.world == 1:
            return part
        table = pd.concat(self.gather(part), ignore_index=True)
        position = {p: i for i, p in enumerate(order["prompt_id"])}
        keys = table.assign(_prompt=table["prompt_id"].map(position))
        if tokens is not None:
            place = {(-1 if t is None else int(t)): i for i, t in enumerate(tokens)}
            keys["_token"] = keys["token"].fillna(-1).astype(int).map(place)
        by = ["_token"] * (tokens is not None) + ["_prompt", "sample"]
        return table.loc[keys.sort_values(by, kind="stable").index].reset_index(drop=True)

    def accumulating(self, model, sync: bool):
        """The context of one micro-batch's forward and backward under DDP: ``no_sync`` unless ``sync`` (a step's
        last micro-batch, or gradients that the master weights take after every backward); nothing for one
        process. (Under an engine, accelerate's ``accumulate`` is the context.)"""
        if self.world > 1 and not sync:
            return model.no_sync()
        return contextlib.nullcontext()

    def prepare_engine(self, model, optimizer, config):
        """``(model, optimizer)`` wrapped by the DeepSpeed or FSDP engine the accelerate config names, with
        quarklab's micro-batch, accumulation and clipping (the engine clips and accumulates itself).

        DeepSpeed computes in the policy's own dtype, as one process does: bf16 or fp16 weights with DeepSpeed's
        fp32 master weights, float32 weights in float32; the checkpoint keeps the policy's dtype."""
        acc = self.accelerator
        acc.gradient_accumulation_steps = config.grad_accum
        plugin = acc.state.deepspeed_plugin
        if plugin is not None:
            ds = plugin.deepspeed_config
            ds.update(train_micro_batch_size_per_gpu=config.batch_size, gradient_accumulation_steps=config.grad_accum,
                      gradient_clipping=config.grad_clip)
            for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
                ds[name] = {**ds.get(name, {}), "enabled": model.dtype == dtype}
        return acc.prepare(model, optimizer)

    def describe(self, model) -> dict:
        """What trains ``model`` (as accelerate wrapped it), as recorded beside each checkpoint: the engine,
        accelerate's distributed type, the processes, the collective backend, the ZeRO stage, and the share of
        the parameters this process holds (1.0 unless the engine shards them: about 1/world under ZeRO-3 and
        FSDP)."""
        held = total = 0
        for p in model.parameters():
            if hasattr(p, "ds_numel"):  # a ZeRO-3 parameter: its full size, and this process's partition
                total, held = total + p.ds_numel, held + p.ds_tensor.numel()
            elif hasattr(p, "to_local"):  # an FSDP2 DTensor: this process's shard
                total, held = total + p.numel(), held + p.to_local().numel()
            else:
                total, held = total + p.numel(), held + p.numel()
        ready = torch.distributed.is_available() and torch.distributed.is_initialized()
        return {"engine": self.engine, "distributed_type": self.distributed_type, "processes": self.world,
                "backend": torch.distributed.get_backend() if ready else None, "zero_stage": self.zero_stage,
                "held_fraction": round(held / max(total, 1), 4)}

    def release(self) -> None:
        """Let go of accelerate's wrappers (DDP, or an engine and its optimizer) once an iteration is trained."""
        if self.accelerator is not None:
            self.accelerator.free_memory()

    def seed(self, seed: int) -> int:
        """A seed of this process's own, equal to ``seed`` for one process."""
        return seed * self.world + self.rank


ENGINE_CONFIGS = {"deepspeed": "configs/accelerate/zero2.yaml or zero3.yaml", "fsdp": "configs/accelerate/fsdp.yaml",
                  "ddp": "configs/accelerate/ddp.yaml"}


def launched_engine() -> str:
    """The engine the launch asked for: "deepspeed" or "fsdp" (``accelerate launch`` with a config of that
    ``distributed_type`` sets ``ACCELERATE_USE_DEEPSPEED`` / ``ACCELERATE_USE_FSDP``), else "ddp"."""
    return "deepspeed" if _flag("ACCELERATE_USE_DEEPSPEED") else "fsdp" if _flag("ACCELERATE_USE_FSDP") else "ddp"


def _flag(name: str) -> bool:
    """An accelerate launch flag of the environment ("True"/"true"/"1")."""
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def check_engine(asked: str, dist: Dist) -> None:
    """One clear error when accelerate runs another engine than the launch asked for (never a silent DDP)."""
    if dist.engine == asked:
        return
    cuda = torch.cuda.is_available()
    where = "GPUs" if cuda else "CPU processes (no CUDA here)"
    hint = {"fsdp": "accelerate runs FSDP on GPUs only; on CPU processes train with DeepSpeed "
                    f"({ENGINE_CONFIGS['deepspeed']}) or DDP ({ENGINE_CONFIGS['ddp']})",
            "deepspeed": "check that deepspeed imports (pip install 'quarklab[deepspeed]')"}.get(asked, f"launch with {ENGINE_CONFIGS['ddp']}")
    raise QuarkError(f"the launch asked for {asked} ({ENGINE_CONFIGS.get(asked, 'its accelerate config')}) but "
                     f"accelerate runs {dist.distributed_type} on {where}; quarklab stops rather than train with "
                     f"another engine: {hint}")
