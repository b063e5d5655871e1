"""The ``quarklab`` command.

Every command reads a relative path (run dirs, ``--out``, ``--to``, ``--config`` files, model, reward and dataset
folders and files, ``file.py:function`` rewards) from the project root (:mod:`quarklab.paths`): ``quarklab train
--run-dir runs/x`` in ``notebooks/`` writes the folder it writes at the root, as the notebooks do.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .errors import QuarkError

PATHS = "relative paths are read from the project root (the folder holding pyproject.toml and notebooks/)"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default, shown once, by the formatter: none for an unset (None), off (False) or empty one."""

    def _get_help_string(self, action):
        default = action.default
        if default is None or default is False or default == "" or default == [] or default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose help shows defaults by :class:`_HelpFormatter` (its subcommands' too)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _assignment(text: str) -> str:
    """A ``--set`` value: ``NAME=VALUE`` (one argument), else an argparse error that shows that form."""
    if not text.partition("=")[0].strip() or "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE: write --set NAME=VALUE as one argument, "
                                         "e.g. --set num_quantiles=3")
    return text


def _world_path(args) -> None:
    from .world.build import WorldSpec, world_dir

    folder = world_dir(WorldSpec(seed=args.seed))
    print(folder if (folder / "world.json").exists() else f"{folder} (not built: quarklab world build)")


def _world_build(args) -> None:
    from .world import WorldSpec, build_world

    world = build_world(WorldSpec(seed=args.seed), force=args.force)
    info = world.info
    print(f"tiny world at {world.root}")
    print(f"  {info['sizes']} prompts; GPT-J with {info['parameters']:,} parameters; "
          f"built in {info['build_seconds']} s")


def _notebook_settings(args, pairs: list[tuple[str, str]] = ()) -> dict:
    """The notebook parameters of ``-p NAME VALUE`` pairs, ``--set NAME=VALUE`` and ``--config FILE``, each value
    read by :func:`quarklab.notebooks.parse_value`."""
    from .notebooks import parse_value

    given = [(name, value, "-p") for name, value in pairs]
    given += [(*(part.strip() for part in item.split("=", 1)), "--set") for item in args.set]
    settings = {name: parse_value(value, name, where=where) for name, value, where in given}
    if args.config:
        settings["config"] = args.config
    return settings


def _notebooks_run(args) -> None:
    from .notebooks import run_notebooks
    from .paths import resolve_path

    params = _notebook_settings(args, args.param)
    for path in run_notebooks(args.run_dir, params, notebooks=args.only or None, cell_timeout=args.cell_timeout):
        print(f"executed {path}")
    run_dir = resolve_path(args.run_dir)
    print(f"figures in {run_dir / 'figures'}, results in {run_dir / 'results'}")


def _notebooks_sweep(args) -> None:
    import pandas as pd

    from .notebooks import parse_value, sweep
    from .paths import resolve_path

    if any(len(p) < 2 for p in args.param):
        raise QuarkError("each -p NAME needs at least one value: -p num_quantiles 3 5 7")
    grid = {p[0]: [parse_value(v, p[0]) for v in p[1:]] for p in args.param}
    table = sweep(args.out, grid, _notebook_settings(args), notebooks=args.only or None, cell_timeout=args.cell_timeout)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 3):
        print(table.to_string(index=False))
    print(f"summary: {resolve_path(args.out) / 'summary.csv'}")


def _config_of(args):
    """The config ``--preset``, ``--config FILE`` and ``--set`` say, in that order, each over the one before."""
    from .config import QuarkConfig, preset
    from .paths import resolve_path

    base = preset(args.preset)
    return QuarkConfig.from_file(resolve_path(args.config), base, args.set) if args.config \
        else base.with_overrides(args.set)


def _train(args) -> None:
    from .config import describe

    if args.help_config:
        print(describe())
        return
    if args.resume and (args.set or args.preset_given or args.config or args.print_config):
        raise QuarkError("--resume continues a run with its own config.json; drop --preset/--config/--set/"
                         "--print-config")
    if args.print_config:
        sets = "".join(f" --set {s}" for s in args.set)
        config = f" --config {args.config}" if args.config else ""
        print(_config_of(args).to_yaml(f"quarklab train --preset {args.preset}{config}{sets} --print-config\n"
                                       "A run config: quarklab train --config THIS_FILE --run-dir DIR. Every field, "
                                       "with what it accepts;\nfields left out of a file keep the --preset's values "
                                       "(quarklab train --help-config documents each)."), end="")
        return
    import pandas as pd

    from .paths import resolve_path
    from .quark import final_table, run

    if args.resume:
        run_dir = args.resume
        metrics = run(None, run_dir, resume=True)
    else:
        if not args.run_dir:
            raise QuarkError("quarklab train needs --run-dir DIR (or --resume RUN_DIR)")
        run_dir = args.run_dir
        metrics = run(_config_of(args), run_dir)
    if int(os.environ.get("RANK", "0")):  # under accelerate launch, the main process prints the table
        return
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 3):
        print(final_table(metrics).to_string(index=False))
    print(f"run: {resolve_path(run_dir)} (config.json, metrics.jsonl, checkpoints/, pool/, eval/; "
          "quarklab train --resume continues it)")


def _seeds(args) -> None:
    import pandas as pd

    from .paths import resolve_path
    from .seeds import INTERVAL_NOTE, seed_summary, summary_table

    summary = seed_summary([resolve_path(d) for d in args.run_dirs], by=args.by)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 40):
        print(summary_table(summary).to_string())
    print(f"at iteration {int(summary['iteration'].max())}; {INTERVAL_NOTE}")
    if args.csv:
        from .files import atomic_write_text

        csv = resolve_path(args.csv)
        atomic_write_text(csv, summary.to_csv(index=False))
        print(f"summary: {csv}")


class _PresetAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        namespace.preset, namespace.preset_given = values, True


def _bench(args) -> None:
    """The benchmark is the ``benchmarks/`` folder of a source checkout, beside the package: it runs there, in a
    child process whose working directory is the checkout (nothing is added to this process's import path)."""
    import json
    import subprocess
    from pathlib import Path

    from .paths import locate, resolve_path

    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "bench.py").is_file():
        raise QuarkError(f"quarklab bench runs the benchmarks/ folder of a source checkout; there is none at {root}")
    knobs = {k: v for k, v in (("quick", args.quick), ("model", locate(args.model)), ("device", args.device),
                               ("warmup", args.warmup), ("reps", args.reps), ("threads", args.threads))
             if v is not None}
    out = str(resolve_path(args.out))
    code = subprocess.call([sys.executable, "-m", "benchmarks.bench", json.dumps(knobs), out], cwd=root)
    if code:
        sys.exit(code)


def _plan(args) -> None:
    from .plan import plan, report

    config = _config_of(args)
    table, totals = plan(config, gpus=args.gpus, gpu_memory_gb=args.gpu_memory_gb, prompt_tokens=args.prompt_tokens,
                         lora_rank=args.lora_rank, sample_tokens_per_s=args.sample_tokens_per_s,
                         train_tokens_per_s=args.train_tokens_per_s)
    print(report(table, totals, config, args.gpus, args.gpu_memory_gb))


def _judge(args) -> None:
    from .judge import make_judge, win_rate

    if args.judge == "http" and not args.judge_model:
        raise QuarkError("--judge http needs --model (the endpoint's model name, e.g. gpt-4o)")
    judge = make_judge(args.judge, args.judge_model, base_url=args.base_url, api_key_env=args.api_key_env or None,
                       concurrency=args.concurrency)
    result = win_rate(args.a, args.b, judge, out=args.out, limit=args.limit, bootstrap_seed=args.seed,
                      progress=True)
    print(result)
    print(f"summary: {result.json_path}\nper-pair records: {result.records_path}")


def _eval(args) -> None:
    from .paths import locate, resolve_path
    from .protocols import default_out, evaluate_policy, resolve_target, write_result

    policy = locate(args.policy)
    result = evaluate_policy(policy, args.protocol, iteration=args.iteration, reward=locate(args.reward),
                             reference=locate(args.reference), dataset=locate(args.dataset), prompts=args.prompts,
                             device=args.device, seed=args.seed, progress=True)
    out = write_result(result, resolve_path(args.out) if args.out
                       else default_out(resolve_target(policy, args.iteration), args.protocol, args.prompts))
    print(result)
    print(f"samples, summary and table: {out}")
    if args.against:
        from dataclasses import replace

        from .judge import load_system, make_judge, win_rate
        from .judge.systems import file_slug

        judge = make_judge(args.judge, args.judge_model, base_url=args.base_url,
                           api_key_env=args.api_key_env or None, concurrency=args.concurrency)
        ours = replace(load_system(f"file:{out / 'samples.parquet'}"), label=file_slug(result.summary["model"][0]))
        print(win_rate(ours, args.against, judge, out=out, bootstrap_seed=args.seed, progress=True))


def _export(args) -> None:
    from .export import export_run, hub_token, push_to_hub
    from .paths import resolve_path

    if args.push_to_hub:
        hub_token(args.push_to_hub)  # before anything is written
    out = export_run(resolve_path(args.run), resolve_path(args.to), args.iteration, repo=args.push_to_hub)
    print(f"model folder and card (README.md): {out}")
    if args.push_to_hub:
        print(f"uploaded to {push_to_hub(out, args.push_to_hub)}")


def _add_judge_options(parser: argparse.ArgumentParser, model_flag: str) -> None:
    parser.add_argument("--judge", choices=["rm", "lm", "http"], default="rm",
                        help="rm: a reward model (tiny-tldr unless " + model_flag + " names one); lm: a local causal "
                             "LM comparing log p(' A') and log p(' B'); http: an OpenAI-compatible chat endpoint")
    parser.add_argument(model_flag, dest="judge_model",
                        help="the judge's model: a reward (folder, hub id, 'module:function' or "
                             "'path/to/file.py:function') or causal LM (folder or hub id), or the endpoint's "
                             "model name (needed for http)")
    parser.add_argument("--base-url", default="https://api.openai.com/v1", help="http: the endpoint's base URL")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="NAME",
                        help="http: the environment variable holding the API key (read, never written); '' for "
                             "none")
    parser.add_argument("--concurrency", type=int, default=8, metavar="N",
                        help="http: requests in flight at once; each judgment is cached as it arrives")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """--preset, --config and --set: one run config, each over the one before (train and plan)."""
    from .config import PRESETS

    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS), action=_PresetAction,
                        help="tiny: the offline world on a CPU; tldr-gpt2: one 24 GB GPU; tldr-gptj: ALT's run")
    parser.add_argument("--config", metavar="FILE", help="a run config (.yaml, .yml or .json: field: value) over "
                        "the preset; train --print-config starts one")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=_assignment,
                        help="set a config field (repeatable, over --config); see quarklab train --help-config")


def _add_notebook_options(parser: argparse.ArgumentParser) -> None:
    """--set, --config, --only and --cell-timeout of quarklab notebooks run and sweep."""
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", type=_assignment,
                        help="a notebook parameter (repeatable), or any QuarkConfig field, which goes to notebook "
                             "02's extra_config (--set kl_coef=0.1 trains with KL 0.1); a config field's VALUE is "
                             "read by the field's type (see quarklab train --help-config), any other as JSON when "
                             "it parses, else as text")
    parser.add_argument("--config", metavar="FILE", help="a run config (as quarklab train --config reads it) for "
                        "every notebook: the parameters it sets, unless given otherwise; in notebook 02 also the "
                        "rest of the run's config")
    parser.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="run only these notebooks (file names)")
    parser.add_argument("--cell-timeout", type=float, metavar="SECONDS",
                        help="stop a cell that runs longer than this (unset: no limit)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="quarklab", description="Quark-style alignment research: tiny offline world, training, "
                     f"notebooks. In every command, {PATHS}.")
    parser.add_argument("--version", action="version", version=f"quarklab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    world = sub.add_parser("world", help="the offline tiny TL;DR world: build it, or print its folder")
    wsub = world.add_subparsers(dest="world_command", required=True, metavar="ACTION")
    build = wsub.add_parser("build", help="build the tiny world into $QUARKLAB_HOME (about 2 minutes; a built one "
                            "is reused) and print its folder")
    build.add_argument("--seed", type=int, default=0, help="the world's seed (data, tokenizer, SFT model)")
    build.add_argument("--force", action="store_true", help="rebuild even if it is cached")
    build.set_defaults(func=_world_build)
    where = wsub.add_parser("path", help="print the tiny world's folder, building nothing (noted when not built)")
    where.add_argument("--seed", type=int, default=0, help="the world's seed")
    where.set_defaults(func=_world_path)

    train = sub.add_parser("train", help="run Quark iterations into a run directory (resumable)")
    _add_config_options(train)
    train.add_argument("--run-dir", help="where the run lives: config, pools, checkpoints, metrics")
    train.add_argument("--print-config", action="store_true",
                       help="print the config (--preset, --config and --set applied) as YAML and exit")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a killed or stopped run")
    train.add_argument("--help-config", action="store_true", help="list every config field and exit")
    train.set_defaults(func=_train, preset_given=False)

    seeds = sub.add_parser("seeds", help="runs of one setting under several seeds: mean ± 95 %% interval at the "
                           "last iteration (token 0 vs SFT reward, spread, controllability)")
    seeds.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (config.json, metrics.jsonl)")
    seeds.add_argument("--by", nargs="+", default=[], metavar="FIELD",
                       help="config fields that tell groups apart (e.g. quantile_scope); any other difference "
                            "than the seed is refused")
    seeds.add_argument("--csv", help="also write the long table (group, quantity, mean, half_width, n) here")
    seeds.set_defaults(func=_seeds)

    nbs = sub.add_parser("notebooks", help="run the notebooks with papermill, or a sweep of them")
    nsub = nbs.add_subparsers(dest="notebooks_command", required=True, metavar="ACTION")
    nrun = nsub.add_parser("run", help="execute the notebooks in order into a run directory")
    nrun.add_argument("--run-dir", required=True, help="executed notebooks, figures, results and the Quark run")
    nrun.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                      help="papermill's spelling of --set NAME=VALUE (repeatable)")
    _add_notebook_options(nrun)
    nrun.set_defaults(func=_notebooks_run)
    nswp = nsub.add_parser("sweep", help="run the notebooks over a grid of parameters, one run dir each")
    nswp.add_argument("-p", "--param", nargs="+", action="append", required=True, metavar="NAME VALUE",
                      help="a parameter and the values to sweep: -p num_quantiles 3 5 7")
    nswp.add_argument("--out", required=True, help="folder for the run dirs and summary.csv")
    _add_notebook_options(nswp)
    nswp.set_defaults(func=_notebooks_sweep)

    pln = sub.add_parser("plan", help="memory per GPU and tokens per iteration of a config, with no weights loaded")
    _add_config_options(pln)
    pln.add_argument("--gpus", type=int, default=1, help="data-parallel GPUs")
    pln.add_argument("--gpu-memory-gb", type=float, default=80.0, help="memory of one GPU in GiB")
    pln.add_argument("--prompt-tokens", type=int, default=512,
                     help="prompt length a micro-batch pads to (TL;DR posts run to about 550)")
    pln.add_argument("--lora-rank", type=int, default=16, help="rank of the LoRA row")
    pln.add_argument("--sample-tokens-per-s", type=float, help="generation throughput, for a time estimate")
    pln.add_argument("--train-tokens-per-s", type=float, help="training throughput, for a time estimate")
    pln.set_defaults(func=_plan, preset_given=False)

    jdg = sub.add_parser("judge", help="win rate of system A over system B on the same prompts, by a pairwise judge")
    jdg.add_argument("--a", required=True, metavar="SPEC", help="system A: RUN_DIR[:token=N,iteration=N|last,"
                     "mode=greedy|sampled,sample=N], RUN_DIR:reference, or file:PATH (.jsonl/.csv/.parquet with "
                     "prompt and completion)")
    jdg.add_argument("--b", required=True, metavar="SPEC", help="system B, written like --a")
    _add_judge_options(jdg, "--model")
    jdg.add_argument("--limit", type=int, help="judge at most this many prompts")
    jdg.add_argument("--seed", type=int, default=0, help="seed of the bootstrap interval")
    jdg.add_argument("--out", help="run directory for judge/cache.jsonl and the results (unset: system A's run)")
    jdg.set_defaults(func=_judge)

    evl = sub.add_parser("eval", help="evaluate a run, a checkpoint or a hub model under a named protocol "
                         "(alt-card: the ALT-Quark card's table): RM, PPL, Avg. len with 95 %% intervals")
    evl.add_argument("policy", metavar="POLICY", help="a run directory (its last checkpoint), a checkpoint folder "
                     "or a hub id such as sauc-abadal-lloret/gpt-j-6b-ALT-Quark-tldr")
    evl.add_argument("--protocol", default="alt-card", choices=["alt-card", "run"],
                     help="alt-card: the card's protocol; run: the run's own evaluation settings")
    evl.add_argument("--iteration", type=int, help="a run's checkpoint to evaluate (unset: the last; 0: the "
                     "run's reference, the SFT model)")
    evl.add_argument("--reward", help="the reward: a folder, hub id, 'module:function' or 'path/to/file.py:function' "
                                      "(unset: the run's, else the protocol's)")
    evl.add_argument("--reference", help="the perplexity reference (unset: the run's, else the protocol's)")
    evl.add_argument("--dataset", help="the prompts (unset: the run's, else the protocol's)")
    evl.add_argument("--prompts", type=int, help="only the first N prompts of the split (unset: the "
                     "protocol's; alt-card: all)")
    evl.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    evl.add_argument("--seed", type=int, default=0, help="seed of the bootstrap intervals")
    evl.add_argument("--out", help="folder for samples.parquet, summary.json and table.md (unset: "
                     "RUN/evals/<protocol>-iter_NNN, or evals/<model>-<protocol>)")
    evl.add_argument("--against", metavar="SPEC", help="also judge these completions against system SPEC "
                     "(written as quarklab judge's --b), win rate with its 95 %% interval")
    _add_judge_options(evl, "--judge-model")
    evl.set_defaults(func=_eval)

    exp = sub.add_parser("export", help="a run's checkpoint as a model folder (weights, tokenizer) with a model "
                         "card README.md: hub metadata, how to prompt, the measured table, the config")
    exp.add_argument("run", metavar="RUN", help="a run directory")
    exp.add_argument("--iteration", type=int, help="the checkpoint to export (unset: the run's last)")
    exp.add_argument("--to", required=True, metavar="DIR", help="the folder to write (must not exist or be empty)")
    exp.add_argument("--push-to-hub", metavar="REPO", help="then upload the folder to this hub model repository "
                     "(needs HF_TOKEN or `hf auth login`)")
    exp.set_defaults(func=_export)

    bench = sub.add_parser("bench", help="measure sampling, training, reward and Quark-iteration throughput")
    bench.add_argument("--model", help="a causal LM folder or hub id (unset: the tiny world's SFT model)")
    bench.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (bf16, SDPA attention); vLLM is "
                       "measured wherever it is installed")
    bench.add_argument("--quick", action="store_true", help="tiny sizes, 1 warm-up and 2 repetitions (for tests)")
    bench.add_argument("--reps", type=int, help="repetitions per figure (unset: 3; --quick: 2)")
    bench.add_argument("--warmup", type=int, help="warm-up runs per figure (unset: 1)")
    bench.add_argument("--threads", type=int, help="torch CPU threads (unset: torch's, one per core)")
    bench.add_argument("--out", default="bench.json", help="where to write the JSON report")
    bench.set_defaults(func=_bench)
    for command in (train, seeds, nrun, nswp, pln, jdg, evl, exp, bench):
        command.epilog = f"{PATHS[0].upper()}{PATHS[1:]}."
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except QuarkError as exc:
        print(f"quarklab: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
