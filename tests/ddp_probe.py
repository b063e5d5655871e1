"""Run by tests/test_distributed.py under ``accelerate launch``: one ``train_on_rows`` over fixed rows in each
process, through quarklab's own Dist, then every weight written to OUT/rank<r>.safetensors for the test to compare.

    accelerate launch --multi_gpu --num_processes 2 tests/ddp_probe.py OUT ACCUM DTYPE
    python tests/ddp_probe.py OUT ACCUM DTYPE --one-process   # grad_accum x 2: the same global batches
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.torch import save_file

import quarklab as ql
from quarklab.config import preset
from quarklab.distributed import Dist
from quarklab.tokens import add_quantile_tokens
from quarklab.train import table_rows, train_on_rows

out = Path(sys.argv[1])
accum, dtype, single = int(sys.argv[2]), sys.argv[3], "--one-process" in sys.argv
world = ql.tiny_world(0, progress=False)
policy, tok = ql.load_policy(world.policy, dtype=dtype), ql.load_tokenizer(world.policy)
control = add_quantile_tokens(policy, tok, 5, seed=0)
prompts = ql.load_prompts("tiny-tldr", "train", limit=4)
pool = ql.sample(policy, tok, prompts, ql.SamplingParams(n=8, max_new_tokens=12, seed=0), suppress=control)
pool["quantile"] = np.arange(len(pool)) % 5
config = preset("tiny").replace(batch_size=4, grad_accum=accum * (2 if single else 1), epochs_per_iteration=2, lr=1e-3,
                                kl_coef=0.0, trainable_fraction=1.0)
dist = Dist() if single else Dist.from_env()
log, _ = train_on_rows(policy, None, table_rows(pd.DataFrame(pool)), config, control, tok.pad_token_id,
                       tok.eos_token_id, seed=1, dist=dist)
out.mkdir(parents=True, exist_ok=True)
save_file({k: v.float().contiguous() for k, v in policy.state_dict().items()}, str(out / f"rank{dist.rank}.safetensors"))
pd.DataFrame(log).to_json(out / f"log{dist.rank}.json")
