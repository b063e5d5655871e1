"""A run's checkpoint as a model folder to share: its weights and tokenizer, and a model card (``README.md``) with
hub metadata, how to prompt with the quantile tokens, the run's measured table and its config
(``quarklab export``)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from . import runs
from .errors import QuarkError
from .files import atomic_dir
from .names import is_named
from .tasks import get_task
from .tokens import quantile_token

TAGS = ["quark", "quantile-tokens", "text-generation", "reinforcement-learning", "quarklab"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SKIP = {runs.TRAINER_STATE}  # the optimizer's state: for resuming a run, not for using the model


def is_hub_id(spec) -> bool:
    """Whether ``spec`` names a hub repository (``owner/name``, not a local path nor a registered name)."""
    return (isinstance(spec, str) and bool(_HUB_ID.match(spec)) and not is_named(spec)
            and not Path(spec).expanduser().exists())


def pick_iteration(run_dir: str | os.PathLike, iteration: int | None = None) -> int:
    """``iteration`` (None: the run's last checkpoint), checked to be a checkpoint the run kept."""
    kept = [runs.iteration_of(p) for p in runs.checkpoints(run_dir)]
    if iteration is None:
        if not kept:
            raise QuarkError(f"run {os.fspath(run_dir)!r} has no checkpoint yet: train it first "
                             f"(quarklab train --resume {os.fspath(run_dir)})")
        return kept[-1]
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration not in kept:
        raise QuarkError(f"run {os.fspath(run_dir)!r} has no checkpoint of iteration {iteration!r} (kept: "
                         f"{kept or 'none'}; keep_checkpoints says how many a run keeps)")
    return iteration


def _num(v) -> str:
    import pandas as pd

    return "" if pd.isna(v) else f"{float(v):.3f}"


def measured_table(run_dir: str | os.PathLike, iteration: int) -> str:
    """The run's greedy evaluation at ``iteration`` and of the reference (iteration 0), one row per token, as a
    Markdown table (reward, perplexity, length per token; 3 decimals as ``quarklab train`` prints them)."""
    metrics = runs.read_metrics(run_dir)
    if metrics.empty or "kind" not in metrics.columns:
        return "_No evaluation recorded in this run's metrics._\n"
    ev = metrics[(metrics["kind"] == "eval") & (metrics["mode"] == "greedy") & metrics["iteration"].isin([0, iteration])]
    if ev.empty:
        return "_No greedy evaluation recorded for these iterations._\n"
    import pandas as pd

    from .protocols import markdown

    ev = ev.sort_values("iteration", kind="stable")
    return markdown(pd.DataFrame({
        "iteration": ev["iteration"].astype(int).to_numpy(), "model": ev["model"].to_numpy(),
        "conditioning": ["none" if pd.isna(t) else f"`{quantile_token(int(t))}`" for t in ev["token"]],
        "reward": ev["reward"].map(_num).to_numpy(), "perplexity": ev["perplexity"].map(_num).to_numpy(),
        "length": ev["length"].map(_num).to_numpy()}))


def protocol_tables(run_dir: str | os.PathLike, iteration: int) -> list[tuple[str, str]]:
    """``(protocol, Markdown table)`` for each protocol evaluation of the run (``RUN/evals/<protocol>-iter_NNN``,
    written by ``quarklab eval`` or a run's ``final_protocol``) at the reference and ``iteration``."""
    import pandas as pd

    from .protocols import card_table, markdown

    found: dict[str, list[dict]] = {}
    for it in sorted({0, iteration}):
        for summary in sorted(Path(run_dir, "evals").glob(f"*-iter_{it:03d}/summary.json")):
            d = json.loads(summary.read_text())
            protocol = d["used"]["protocol"]
            name = protocol["name"] + (f", first {protocol['eval_prompts']} prompts" if protocol["eval_prompts"]
                                       else "")
            found.setdefault(name, []).append(d["summary"])
    return [(name, markdown(card_table(pd.DataFrame(rows)))) for name, rows in found.items()]


def model_card(run_dir: str | os.PathLike, iteration: int, tokenizer=None, repo: str | None = None) -> str:
    """The model card (``README.md``) of the run's checkpoint ``iteration``: hub metadata, how to prompt, the measured
    table (and protocol tables where evaluated), the run's config. ``tokenizer``: the checkpoint's (for K);
    ``repo``: the name the snippet loads (default the folder it is written to, ``.``)."""
    import yaml

    from .models import load_tokenizer
    from .tokens import quantile_token_ids

    config = runs.read_config(run_dir)
    if tokenizer is None:
        tokenizer = load_tokenizer(runs.checkpoint_path(run_dir, iteration))
    k = len(quantile_token_ids(tokenizer))
    meta = {"library_name": "transformers", "pipeline_tag": "text-generation", "tags": TAGS}
    if is_hub_id(config.policy):
        meta["base_model"] = config.policy
    if is_hub_id(config.dataset):
        meta["datasets"] = [config.dataset]
    front = yaml.safe_dump(meta, sort_keys=False, default_flow_style=False)
    names = ", ".join(f"`{quantile_token(i)}`" for i in range(k))
    where = repo or "path/to/this/folder"
    run_name = Path(run_dir).name
    parts = [
        f"---\n{front}---\n",
        f"# {run_name}, Quark iteration {iteration}\n",
        f"A causal language model trained with Quark (quantized reward conditioning) by quarklab: run `{run_name}`, "
        f"checkpoint of iteration {iteration} of {config.iterations}, starting from `{config.policy}` on prompts of "
        f"`{config.dataset}`.\n",
        "## How to prompt\n",
        f"The reward was cut into K = {k} quantiles, each with its token: {names}. `{quantile_token(0)}` is the best "
        f"quantile (highest reward), `{quantile_token(k - 1)}` the worst. Prepend the token to the prompt, with no "
        "space, and generate greedily:\n",
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(where)})\n"
        f"model = AutoModelForCausalLM.from_pretrained({json.dumps(where)})\n"
        f"prompt = {json.dumps(quantile_token(0))} + {json.dumps(get_task(config.task).example)}\n"
        "inputs = tokenizer(prompt, return_tensors=\"pt\")\n"
        f"out = model.generate(**inputs, max_new_tokens={config.eval_max_new_tokens}, do_sample=False, "
        "pad_token_id=tokenizer.eos_token_id)\n"
        "print(tokenizer.decode(out[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))\n```\n",
        "## Measured\n",
        f"The run's greedy evaluation ({config.eval_prompts} prompts) of this checkpoint (iteration {iteration}) and "
        "of the reference it started from (iteration 0), per conditioning token: mean reward, perplexity under the "
        "reference, mean length in tokens.\n",
        measured_table(run_dir, iteration),
    ]
    for name, table in protocol_tables(run_dir, iteration):
        protocol, _, part = name.partition(", ")
        parts += [f"Under the `{protocol}` protocol{f' ({part})' if part else ''} (`quarklab eval --protocol "
                  f"{protocol}`), with 95 % intervals:\n", table]
    parts += ["## Config\n", "The run's settings (`config.json`; `quarklab train --config` reads this file back):\n",
              f"```yaml\n{config.to_yaml()}```\n"]
    return "\n".join(parts)


def export_run(run_dir: str | os.PathLike, to: str | os.PathLike, iteration: int | None = None,
               repo: str | None = None) -> Path:
    """Write the run's checkpoint ``iteration`` (None: the last) into ``to``: its weights and tokenizer, and a model
    card ``README.md`` (:func:`model_card`); a folder ``load_policy`` / ``from_pretrained`` opens. ``to`` must not
    exist or be empty; it appears whole or not at all. ``repo``: the hub id the card's snippet loads. Returns ``to``."""
    from .models import load_tokenizer

    runs.read_config(run_dir)  # one clear error when run_dir is not a run
    it = pick_iteration(run_dir, iteration)
    to = Path(to)
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise QuarkError(f"{os.fspath(to)!r} already exists and is not an empty folder: export into a new one "
                         "(nothing was written)")
    source = runs.checkpoint_path(run_dir, it)
    tokenizer = load_tokenizer(source)
    card = model_card(run_dir, it, tokenizer, repo)
    with atomic_dir(to) as tmp:
        for f in sorted(source.iterdir()):
            if f.name in _SKIP:
                continue
            (shutil.copytree if f.is_dir() else shutil.copy2)(f, tmp / f.name)
        (tmp / "README.md").write_text(card)
    return to


def hub_token(repo: str) -> str:
    """The Hugging Face token to upload to ``repo`` with (HF_TOKEN, or the one ``hf auth login`` stored); one
    QuarkError when there is none."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise QuarkError(f"--push-to-hub {repo}: no Hugging Face token (set HF_TOKEN, or run `hf auth login`); "
                         "nothing was exported or uploaded")
    return token


def push_to_hub(folder: str | os.PathLike, repo: str) -> str:
    """Upload ``folder`` to the hub model repository ``repo`` (created when missing); needs a token (HF_TOKEN or
    ``hf auth login``). Returns the repository's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=hub_token(repo))
    url = api.create_repo(repo, repo_type="model", exist_ok=True)
    api.upload_folder(folder_path=os.fspath(folder), repo_id=repo, repo_type="model")
    return str(url)


