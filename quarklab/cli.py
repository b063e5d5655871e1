"""The ``quarklab`` command."""

from __future__ import annotations

import argparse
import sys

from .errors import QuarkError


def _world_build(args) -> None:
    from .world import WorldSpec, build_world

    world = build_world(WorldSpec(seed=args.seed), force=args.force)
    info = world.info
    print(f"tiny world at {world.root}")
    print(f"  {info['sizes']} prompts; GPT-J with {info['parameters']:,} parameters; "
          f"built in {info['build_seconds']} s")


def _demo(args) -> None:
    import quarklab as ql

    world = ql.tiny_world(args.seed)
    policy, tokenizer = ql.load_policy(world.policy), ql.load_tokenizer(world.policy)
    prompts = ql.load_prompts("tiny-tldr", "test", limit=args.num_prompts, seed=args.seed)
    out = ql.sample(policy, tokenizer, prompts, do_sample=False)
    reward = ql.load_reward("tiny-tldr")
    out["reward"] = reward(out["prompt"].tolist(), out["completion"].tolist())
    ref = reward(prompts["prompt"].tolist(), prompts["label"].tolist())
    for (_, row), ref_score, label in zip(out.iterrows(), ref, prompts["label"]):
        title = row["prompt"].split("\n")[1]
        print(f"\n{title}\n  SFT greedy  ({row['reward']:.2f}): {row['completion']}"
              f"\n  reference   ({ref_score:.2f}): {label}")
    print(f"\nmean reward over {len(out)} prompts: SFT greedy {out['reward'].mean():.3f}, "
          f"reference summaries {ref.mean():.3f}")


def _train(args) -> None:
    import pandas as pd

    from .config import describe, preset
    from .quark import final_table, run

    if args.help_config:
        print(describe())
        return
    if args.resume:
        if args.set or args.preset_given:
            raise QuarkError("--resume continues a run with its own config.json; drop --preset/--set")
        metrics = run(None, args.resume, resume=True)
    else:
        if not args.run_dir:
            raise QuarkError("quarklab train needs --run-dir DIR (or --resume RUN_DIR)")
        metrics = run(preset(args.preset).with_overrides(args.set), args.run_dir)
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 3):
        print(final_table(metrics).to_string(index=False))


class _PresetAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        namespace.preset, namespace.preset_given = values, True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quarklab", description="Quark-style alignment research: tiny offline world, training, notebooks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    world = sub.add_parser("world", help="build or locate the offline tiny TL;DR world")
    wsub = world.add_subparsers(dest="world_command", required=True, metavar="ACTION")
    build = wsub.add_parser("build", help="build the tiny world into $QUARKLAB_HOME (about 2 minutes)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--force", action="store_true", help="rebuild even if it is cached")
    build.set_defaults(func=_world_build)

    train = sub.add_parser("train", help="run Quark iterations into a run directory (resumable)")
    train.add_argument("--preset", default="tiny", action=_PresetAction, help="tiny (offline CPU) or tldr-gptj")
    train.add_argument("--run-dir", help="where the run lives: config, pools, checkpoints, metrics")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field (repeatable); see --help-config")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a killed or stopped run")
    train.add_argument("--help-config", action="store_true", help="list every config field and exit")
    train.set_defaults(func=_train, preset_given=False)

    demo = sub.add_parser("demo", help="the main job on the offline default")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--num-prompts", type=int, default=5)
    demo.set_defaults(func=_demo)
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
