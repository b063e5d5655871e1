"""Several runs of one setting under different seeds: grouped by their config, averaged, given 95 % intervals.

A run directory holds ``config.json`` and ``metrics.jsonl`` (:mod:`quarklab.runs`). :func:`group_runs`
puts runs whose configs agree on everything but ``seed`` into one group; runs that differ in anything
else are refused with one :class:`~quarklab.errors.QuarkError` naming the differing fields, unless the
caller groups by them (``by=["quantile_scope"]``). :func:`seed_curves` gives, per (group, token,
iteration, metric), the mean over the group's seeds, ``n`` and a 95 % interval; :func:`seed_summary`
the numbers a researcher quotes at the last iteration.

The interval is Student's t over seeds: ``mean ± t_{0.975, n-1} · s / √n``, with ``s`` the sample
standard deviation (ddof = 1) of the n per-seed values. With n = 1 there is no interval (half-width
NaN), never a zero-width one. ``t_{0.975, df}`` comes from :data:`T975` (standard table values to 4
decimals, df 1..30; scipy is not a dependency) and, beyond df 30, from the Cornish-Fisher expansion
of the t quantile around the normal one (error below 1e-4 there).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .analysis.metric_rows import eval_rows, token_mask, train_rows
from .analysis.tradeoffs import quoted_points, tradeoff_points
from .config import QuarkConfig
from .errors import QuarkError
from .runs import read_config, read_metrics
from .tokens import as_token, sorted_tokens, token_label, token_series

__all__ = ["T975", "t975", "t_interval", "group_runs", "check_seed_runs", "seed_curves",
           "seed_summary", "summary_table", "summary_record", "tradeoff_points_over_seeds"]

# t_{0.975, df}: the two-sided 95 % Student t quantile, df = 1..30 (standard table values).
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646, 8: 2.3060, 9: 2.2622,
        10: 2.2281, 11: 2.2010, 12: 2.1788, 13: 2.1604, 14: 2.1448, 15: 2.1314, 16: 2.1199, 17: 2.1098,
        18: 2.1009, 19: 2.0930, 20: 2.0860, 21: 2.0796, 22: 2.0739, 23: 2.0687, 24: 2.0639, 25: 2.0595,
        26: 2.0555, 27: 2.0518, 28: 2.0484, 29: 2.0452, 30: 2.0423}
Z975 = 1.959964
INTERVAL_NOTE = "95 % interval over seeds: mean ± t(0.975, n−1)·s/√n"
EVAL_METRICS = ("reward", "perplexity", "length")
CONTROL_METRICS = ("order_spearman", "controllability")
TRAIN_METRICS = ("kl", "nll", "entropy", "loss")


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (see the module docstring)."""
    if df < 1:
        raise QuarkError(f"a t interval needs at least 1 degree of freedom (2 seeds), got df={df}")
    if df in T975:
        return T975[df]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t_interval(values: Iterable[float]) -> tuple[float, int, float]:
    """``(mean, n, half_width)`` of the finite ``values``: half_width = t_{0.975, n-1} · s / √n (s with
    ddof = 1); NaN when n = 1 (no interval) and a NaN mean when n = 0."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, 0, math.nan
    if n == 1:
        return float(v[0]), 1, math.nan
    return float(v.mean()), n, t975(n - 1) * float(v.std(ddof=1)) / math.sqrt(n)


def _differing(configs: dict[str, dict], ignore: set[str]) -> list[str]:
    names = sorted({k for c in configs.values() for k in c} - ignore)
    return [k for k in names if len({json.dumps(c.get(k), sort_keys=True) for c in configs.values()}) > 1]


def group_runs(run_dirs: Sequence[str | os.PathLike], by: Sequence[str] = ()) -> dict[str, list[Path]]:
    """Runs of one setting under different seeds, as ``{group label: [run dirs]}`` in the order given.

    Runs are grouped by their config with ``seed`` left out; the label is ``"field=value, ..."`` of the
    ``by`` fields (``"all runs"`` without ``by``). Runs that differ in a field other than ``seed`` and
    ``by`` are refused (one QuarkError naming each differing field and its values), as are two runs of
    one group with the same seed (the same run twice would inflate n).
    """
    return _grouped(run_dirs, by)[0]


def _grouped(run_dirs: Sequence[str | os.PathLike], by: Sequence[str] = (),
             configs: dict[str, dict] | None = None) -> tuple[dict[str, list[Path]], dict[str, dict]]:
    """:func:`group_runs`'s groups and the configs read for them (``{str(run dir): config}``), each read once;
    ``configs`` already read are used as given."""
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise QuarkError("group_runs needs at least one run directory")
    known = configs or {}
    configs = {str(d): known[str(d)] if str(d) in known else read_config(d).to_dict() for d in dirs}
    unknown = [f for f in by if f not in next(iter(configs.values()))]
    if unknown or "seed" in by:
        raise QuarkError(f"group by: {unknown or ['seed']} is not a config field to group seeds by "
                         "(seed is what is averaged over)")
    differ = _differing(configs, {"seed", *by})
    if differ:
        detail = "; ".join(f"{k}: " + ", ".join(f"{Path(d).name}={c.get(k)!r}" for d, c in configs.items())
                           for k in differ)
        raise QuarkError(f"these runs differ in more than the seed ({detail}): average only runs of one setting, "
                         f"or group them by those fields (by={differ!r})")
    groups: dict[str, list[Path]] = {}
    for d in dirs:
        label = ", ".join(f"{f}={configs[str(d)][f]}" for f in by) or "all runs"
        groups.setdefault(label, []).append(d)
    for label, members in groups.items():
        seeds = [configs[str(d)]["seed"] for d in members]
        twice = sorted({s for s in seeds if seeds.count(s) > 1})
        if twice:
            raise QuarkError(f"group {label!r} holds more than one run of seed {twice}: "
                             + ", ".join(str(d) for d in members) + "; leave the copies out")
    return groups, configs


def check_seed_runs(config: QuarkConfig, run_dirs: Sequence[str | os.PathLike]) -> None:
    """Before training ``config``: one QuarkError when a run in ``run_dirs`` differs from it in more than the
    seed, or has its seed (what :func:`group_runs` would refuse afterwards)."""
    configs = {"this run": config.to_dict(), **{Path(d).name or str(d): read_config(d).to_dict() for d in run_dirs}}
    differ = _differing(configs, {"seed"})
    if differ:
        detail = "; ".join(f"{k}: " + ", ".join(f"{d}={c.get(k)!r}" for d, c in configs.items()) for k in differ)
        raise QuarkError(f"seed_run_dirs must be runs of these settings under other seeds, and they differ in more "
                         f"than the seed ({detail}): drop those runs, or match the settings")
    seeds = [c["seed"] for c in configs.values()]
    if len(set(seeds)) < len(seeds):
        raise QuarkError(f"seed_run_dirs repeat a seed (seeds {seeds}: this run first): each run must have its own")


def _per_run(run_dir: Path) -> tuple[pd.DataFrame, int, dict[str, float]]:
    """One run's values, from one read of its metrics: as rows (token, iteration, metric, value) -- greedy
    eval metrics per token, and per iteration with no token (None: they are not per token) the paired
    differences, the controllability columns and the training terms (mean over steps) -- and (last iteration,
    the quoted quantities there; see :func:`seed_summary`)."""
    metrics = read_metrics(run_dir)
    if metrics.empty:
        raise QuarkError(f"{str(run_dir)!r} has no metrics.jsonl rows yet: train it first")
    ev = eval_rows(metrics)
    rows = []
    for col in EVAL_METRICS:
        if col in ev.columns:
            v = pd.to_numeric(ev[col], errors="coerce").groupby([ev["token"], ev["iteration"]], dropna=False).mean()
            rows += [(as_token(t), it, col, x) for (t, it), x in v.items()]
    reward = pd.to_numeric(ev["reward"], errors="coerce").groupby([ev["iteration"], ev["token"]], dropna=False).mean()
    reward = {(it, as_token(t)): x for (it, t), x in reward.items()}
    tokens = [t for t in sorted_tokens(ev["token"]) if t is not None]
    for it in sorted(set(ev["iteration"]) - {0}):  # per run, so that the interval is over paired differences
        at = {t: x for (i, t), x in reward.items() if i == it}
        if len(tokens) > 1 and {tokens[0], tokens[-1]} <= set(at):
            rows.append((None, it, "spread", at[tokens[0]] - at[tokens[-1]]))
        if (0, None) in reward and tokens and tokens[0] in at:
            rows.append((None, it, "token0_minus_sft", at[tokens[0]] - reward[(0, None)]))
    for col in CONTROL_METRICS:
        if col in ev.columns:
            v = pd.to_numeric(ev[col], errors="coerce").groupby(ev["iteration"]).mean().dropna()
            rows += [(None, it, col, x) for it, x in v.items()]
    tr = train_rows(metrics)
    for col in TRAIN_METRICS:
        if not tr.empty and col in tr.columns:
            v = pd.to_numeric(tr[col], errors="coerce").groupby(tr["iteration"]).mean().dropna()
            rows += [(None, it, col, x) for it, x in v.items()]
    last, quoted = _quoted_at_last(ev)
    values = pd.DataFrame(rows, columns=["token", "iteration", "metric", "value"])
    return values.assign(token=token_series(values["token"])), last, quoted


def _quoted_at_last(ev: pd.DataFrame) -> tuple[int, dict[str, float]]:
    """(last iteration, the run's quoted quantities there) from its eval rows: see :func:`seed_summary`."""
    last = int(ev["iteration"].max())
    at = ev[ev["iteration"] == last]
    tokens = [t for t in sorted_tokens(at["token"]) if t is not None]

    def mean(rows, col="reward"):
        return float(pd.to_numeric(rows[col], errors="coerce").mean()) if col in rows.columns and len(rows) else math.nan

    sft = ev[ev["iteration"] == 0]
    sft = sft[sft["token"].isna()] if sft["token"].isna().any() else sft
    token0 = mean(at[token_mask(at["token"], 0)]) if last > 0 else math.nan
    out = {"token0_reward": token0, "sft_reward": mean(sft), "token0_minus_sft": token0 - mean(sft),
           "spread": token0 - mean(at[token_mask(at["token"], tokens[-1])]) if len(tokens) > 1 else math.nan,
           "controllability": mean(at, "controllability"), "order_spearman": mean(at, "order_spearman")}
    return last, out


def _seed_values(run_dirs: Sequence[str | os.PathLike], by: Sequence[str] = ()) -> dict[str, list[dict]]:
    """Per group (:func:`group_runs`), per run in the order given: ``run`` (its dir), ``seed``, ``values``
    (:func:`_per_run`'s rows), ``last`` iteration and ``quoted`` quantities there -- each config and
    metrics file read once, for :func:`seed_curves` and :func:`seed_summary` alike."""
    groups, configs = _grouped(run_dirs, by)
    out: dict[str, list[dict]] = {}
    for label, members in groups.items():
        for d in members:
            values, last, quoted = _per_run(d)
            out.setdefault(label, []).append({"run": d, "seed": configs[str(d)]["seed"], "values": values,
                                              "last": last, "quoted": quoted})
    return out


def _interval_frame(values: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    out = []
    for key, part in values.groupby(keys, sort=False, dropna=False):
        mean, n, hw = t_interval(part["value"])
        out.append({**dict(zip(keys, key)), "mean": mean, "n": n, "half_width": hw,
                    "low": mean - hw, "high": mean + hw,
                    "seeds": ",".join(map(str, part["seed"][np.isfinite(part["value"].astype(float))]))})
    return pd.DataFrame(out)


def seed_curves(run_dirs: Sequence[str | os.PathLike], by: Sequence[str] = ()) -> pd.DataFrame:
    """Per (group, token, iteration, metric): ``mean`` over the group's seeds, ``n``, ``half_width`` of the
    95 % t interval (NaN for n = 1), ``low``/``high`` and the ``seeds`` averaged (see the module docstring).

    Metrics: ``reward``, ``perplexity``, ``length`` per token (``token``: the quantile index as nullable
    ``Int64``, ``<NA>`` for no token; iteration 0 is the SFT reference) from the greedy evaluation rows;
    not per token (``token`` ``<NA>``): ``spread`` (reward of
    token 0 − token K−1) and ``token0_minus_sft`` (token 0 − the iteration-0 reference), both taken per
    run before averaging (paired), ``order_spearman``, ``controllability``, and the training terms
    ``kl``, ``nll``, ``entropy``, ``loss`` (mean over the iteration's steps). Grouping and refusals as in
    :func:`group_runs`.
    """
    parts = [r["values"].assign(group=label, seed=r["seed"], run=str(r["run"]))
             for label, runs in _seed_values(run_dirs, by).items() for r in runs]
    values = pd.concat(parts, ignore_index=True)
    out = _interval_frame(values, ["group", "token", "iteration", "metric"])
    out["token"] = token_series(out["token"])
    tokens = {t: i for i, t in enumerate(sorted_tokens(out["token"]))}
    groups = {g: i for i, g in enumerate(dict.fromkeys(out["group"]))}  # groups in the order given
    order = {"token": lambda s: pd.Series([tokens[as_token(t)] for t in s], index=s.index),
             "group": lambda s: s.map(groups)}
    out = out.sort_values(["group", "metric", "iteration", "token"], key=lambda s: order[s.name](s)
                          if s.name in order else s, kind="stable")
    return out.reset_index(drop=True)[["group", "metric", "token", "iteration", "mean", "n", "half_width", "low",
                                       "high", "seeds"]]


QUANTITIES = {"token0_reward": "token 0 reward", "sft_reward": "SFT reward", "token0_minus_sft": "token 0 − SFT",
              "spread": "spread 0−(K−1)", "controllability": "controllability", "order_spearman": "order_spearman"}


def seed_summary(run_dirs: Sequence[str | os.PathLike], by: Sequence[str] = ()) -> pd.DataFrame:
    """The table a researcher quotes: per group and quantity, ``mean``, ``half_width`` (95 % t interval over
    seeds, NaN for n = 1), ``n`` and ``text`` (``"1.234 ± 0.056 (n=3)"``), at the groups' last iteration.

    Quantities (:data:`QUANTITIES`): token 0's greedy reward, the SFT reference's (iteration 0), their
    difference taken per seed before averaging (paired), the spread token 0 − token K−1, and the eval
    rows' ``controllability`` (Spearman of token index vs every sample's reward) and ``order_spearman``
    (of token index vs the tokens' mean rewards; −1 = order respected). Every run of a group must have
    reached the same last iteration (else one QuarkError naming them).
    """
    rows = []
    for label, runs in _seed_values(run_dirs, by).items():
        lasts = {str(r["run"]): (r["last"], r["quoted"]) for r in runs}
        if len({last for last, _ in lasts.values()}) > 1:
            raise QuarkError(f"the runs of group {label!r} stop at different iterations ("
                             + ", ".join(f"{d}: {last}" for d, (last, _) in lasts.items())
                             + "): finish them (quarklab train --resume RUN_DIR) or leave the short ones out")
        last = next(iter(lasts.values()))[0]
        for key, name in QUANTITIES.items():
            m, n, hw = t_interval([v[key] for _, v in lasts.values()])
            text = "–" if n == 0 else f"{m:.3f} ± {hw:.3f} (n={n})" if n > 1 else f"{m:.3f} (n=1, no interval)"
            rows.append({"group": label, "iteration": last, "quantity": name, "mean": m, "half_width": hw, "n": n,
                         "text": text})
    return pd.DataFrame(rows)


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """:func:`seed_summary` as a wide table to quote: a row per group, a column per quantity (``text``)."""
    wide = summary.pivot(index="group", columns="quantity", values="text")
    wide = wide[[q for q in QUANTITIES.values() if q in wide.columns]]
    wide.columns.name = None
    return wide.loc[list(dict.fromkeys(summary["group"]))]


def summary_record(summary: pd.DataFrame) -> dict:
    """:func:`seed_summary` as plain JSON data for a results file: ``{group: {quantity: {mean, half_width, n}}}``
    (``None`` where there is no value or no interval)."""
    def num(v):
        return None if v is None or not np.isfinite(v) else float(v)

    out: dict = {}
    for _, r in summary.iterrows():
        out.setdefault(r["group"], {"iteration": int(r["iteration"])})[r["quantity"]] = {
            "mean": num(r["mean"]), "half_width": num(r["half_width"]), "n": int(r["n"])}
    return out


def tradeoff_points_over_seeds(run_dirs: Sequence[str | os.PathLike], *, quoted=None) -> pd.DataFrame:
    """Notebook 04's points (:func:`quarklab.analysis.tradeoff_points`) for several runs: runs of one setting
    under ≥ 2 seeds become one point per token at their last iteration (and their SFT reference), the mean
    over seeds with ``reward_hw``, ``perplexity_hw``, ``length_hw`` (95 % t half-widths) and ``n``;
    a run whose setting no other run shares keeps one point per iteration and token, as before. The first
    run is drawn unprefixed and carries ``quoted``; the others are prefixed with their folder name.
    """
    dirs = [Path(d) for d in run_dirs]
    full = {str(d): read_config(d).to_dict() for d in dirs}
    configs = {d: {k: v for k, v in full[str(d)].items() if k != "seed"} for d in dirs}
    settings: dict[str, list[Path]] = {}
    for d in dirs:
        settings.setdefault(json.dumps(configs[d], sort_keys=True, default=str), []).append(d)
    parts, done = [], set()
    for i, d in enumerate(dirs):
        if d in done:
            continue
        members = settings[json.dumps(configs[d], sort_keys=True, default=str)]
        done.update(members)
        q = quoted if i == 0 else None
        if len(members) == 1:
            parts.append(tradeoff_points(read_metrics(d), quoted=q, label_prefix="" if i == 0 else f"{d.name}: "))
            continue
        _grouped(members, configs=full)  # refuses two runs of one seed
        name = f"{d.name} + {len(members) - 1} seed{'s' if len(members) > 2 else ''}"
        parts.append(_mean_points(members, name, q))
    return pd.concat(parts, ignore_index=True)


def _mean_points(members: list[Path], name: str, quoted) -> pd.DataFrame:
    pts = []
    for d in members:
        p = tradeoff_points(read_metrics(d))
        last = p["iteration"].max()
        pts.append(p[(p["iteration"] == last) | (p["iteration"] == 0)].assign(last=last))
    if len({int(p["last"].iloc[0]) for p in pts}) > 1:
        raise QuarkError(f"the seed runs {[str(d) for d in members]} stop at different iterations: finish them "
                         "(quarklab train --resume RUN_DIR) or leave the short ones out")
    every = pd.concat(pts, ignore_index=True)
    rows = []
    for (group, it, token), part in every.groupby(["group", "iteration", "token"], sort=False, dropna=False):
        token = as_token(token)
        row = {"group": group, "iteration": int(it), "token": token, "quoted": False, "run": name}
        for col in EVAL_METRICS:
            row[col], row["n"], row[f"{col}_hw"] = t_interval(part[col])
        kind = "SFT (reference)" if it == 0 else f"iter {it} · {token_label(token)}"
        row["label"] = f"{name}: {kind} (mean of {row['n']} seeds)"
        rows.append(row)
    out = pd.DataFrame(rows)
    out["iteration"] = out["iteration"].astype("Int64")
    out["token"] = token_series(out["token"])
    out["n"] = out["n"].astype("Int64")
    if quoted is not None:
        out = pd.concat([out, quoted_points(quoted).assign(run=name)], ignore_index=True)
    return out
