"""Several runs of one setting under different seeds (quarklab.seeds, notebooks 02 and 04
given seed runs): real tiny-world Quark runs under seeds 0, 1, 2; intervals checked by hand."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from quarklab import runs, seeds  # noqa: E402
from quarklab.config import preset  # noqa: E402
from quarklab.errors import QuarkError  # noqa: E402
from quarklab.notebooks import results, run_notebooks  # noqa: E402
from quarklab.analysis import token_mask  # noqa: E402
from quarklab.present import run_plots  # noqa: E402
from quarklab.tokens import as_token  # noqa: E402


def t_cdf(t: float, df: int, steps: int = 200_000) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom: 1/2 + Simpson's rule on its density over [0, t]."""
    x = np.linspace(0.0, t, steps + 1)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    f = c * (1 + x * x / df) ** (-(df + 1) / 2)
    h = t / steps
    return 0.5 + h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 10, 19, 29, 30, 31, 45, 100])
def test_the_t_quantiles_are_the_975th_percentile(df):
    """The table (df <= 30) and the expansion beyond it, against the t distribution integrated here."""
    assert abs(t_cdf(seeds.t975(df), df) - 0.975) < 3e-5


def test_the_interval_is_mean_plus_minus_t_s_over_root_n_by_hand():
    mean, n, hw = seeds.t_interval([1.0, 2.0, 4.0])
    # mean 7/3; s^2 = ((4/3)^2 + (1/3)^2 + (5/3)^2) / 2 = 7/3; t(0.975, 2) = 4.3027
    assert n == 3 and mean == pytest.approx(7 / 3)
    assert hw == pytest.approx(4.3027 * math.sqrt(7 / 3) / math.sqrt(3), rel=1e-12)
    assert seeds.t_interval([2.0, 2.0]) == (2.0, 2, 0.0)
    one = seeds.t_interval([5.0, float("nan")])  # one finite value: no interval, not a zero-width one
    assert one[:2] == (5.0, 1) and math.isnan(one[2])
    assert seeds.t_interval([])[1] == 0


def eval_value(run_dir, iteration, token, column="reward"):
    """A greedy evaluation value read straight from a run's metrics.jsonl (``token``: k, or None for no token)."""
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["kind"] == "eval" and row["mode"] == "greedy" and row["iteration"] == iteration \
                and as_token(row["token"]) == token:
            return row[column]
    raise AssertionError(f"no eval row ({iteration}, {token}) in {run_dir}")


def by_hand(values):
    v = np.asarray(values, float)
    return v.mean(), seeds.T975[len(v) - 1] * v.std(ddof=1) / math.sqrt(len(v))


def test_curves_are_the_mean_and_t_interval_of_the_seeds(tiny_seed_runs):
    assert [runs.read_config(d).seed for d in tiny_seed_runs] == [0, 1, 2]
    curves = seeds.seed_curves(tiny_seed_runs)
    assert set(curves["group"]) == {"all runs"} and set(curves["n"]) == {3}
    assert {"reward", "perplexity", "length", "order_spearman", "controllability", "kl", "loss"} <= set(curves["metric"])
    assert curves["token"].dtype == "Int64"  # the one token form
    for metric, token, it in [("reward", 0, 2), ("reward", 2, 1), ("length", None, 2), ("perplexity", 1, 2)]:
        row = curves[(curves["metric"] == metric) & token_mask(curves["token"], token)
                     & (curves["iteration"] == it)]
        mean, hw = by_hand([eval_value(d, it, token, metric) for d in tiny_seed_runs])
        assert len(row) == 1 and row["mean"].iloc[0] == pytest.approx(mean)
        assert row["half_width"].iloc[0] == pytest.approx(hw) and row["seeds"].iloc[0] == "0,1,2"
        assert row["low"].iloc[0] == pytest.approx(mean - hw) and row["high"].iloc[0] == pytest.approx(mean + hw)
    for metric, other in (("spread", lambda d, it: eval_value(d, it, 2)),
                          ("token0_minus_sft", lambda d, it: eval_value(d, 0, None))):  # paired per seed
        row = curves[(curves["metric"] == metric) & (curves["iteration"] == 1)]
        mean, hw = by_hand([eval_value(d, 1, 0) - other(d, 1) for d in tiny_seed_runs])
        assert len(row) == 1 and row["token"].isna().all()  # not per token
        assert row["mean"].iloc[0] == pytest.approx(mean)
        assert row["half_width"].iloc[0] == pytest.approx(hw)
    sft = curves[(curves["metric"] == "reward") & (curves["iteration"] == 0)]
    assert sft["token"].isna().tolist() == [True]  # iteration 0: the SFT reference only, no token


def test_the_summary_pairs_token_0_with_sft_per_seed(tiny_seed_runs):
    summary = seeds.seed_summary(tiny_seed_runs)
    assert set(summary["iteration"]) == {2} and set(summary["n"]) <= {3, 0}
    got = summary.set_index("quantity")
    diffs = [eval_value(d, 2, 0) - eval_value(d, 0, None) for d in tiny_seed_runs]
    mean, hw = by_hand(diffs)
    assert got.loc["token 0 − SFT", "mean"] == pytest.approx(mean)
    assert got.loc["token 0 − SFT", "half_width"] == pytest.approx(hw)
    assert got.loc["token 0 − SFT", "text"] == f"{mean:.3f} ± {hw:.3f} (n=3)"
    spread = by_hand([eval_value(d, 2, 0) - eval_value(d, 2, 2) for d in tiny_seed_runs])
    assert got.loc["spread 0−(K−1)", "mean"] == pytest.approx(spread[0])
    control = by_hand([eval_value(d, 2, 0, "controllability") for d in tiny_seed_runs])
    assert got.loc["controllability", "mean"] == pytest.approx(control[0])
    table = seeds.summary_table(summary)
    assert table.index.tolist() == ["all runs"] and table.columns[:3].tolist() == ["token 0 reward", "SFT reward",
                                                                                      "token 0 − SFT"]
    record = seeds.summary_record(summary)["all runs"]
    assert record["iteration"] == 2 and record["token 0 − SFT"]["n"] == 3
    json.dumps(record, allow_nan=False)  # plain JSON for a results file


def other_setting(run_dir, dest, **changes):
    """A copy of ``run_dir``'s files whose config.json says other settings (its metrics as they were)."""
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("checkpoints", "pool", "eval", "figures"))
    config = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**config, **changes}))
    return dest


def test_runs_of_other_settings_are_refused_unless_grouped_by_the_field(tiny_seed_runs, tmp_path):
    other = other_setting(tiny_seed_runs[0], tmp_path / "global", quantile_scope="global", seed=7)
    with pytest.raises(QuarkError, match=r"differ in more than the seed \(quantile_scope: tiny='local', "
                                         r"seed1='local', seed2='local', global='global'\).*by=\['quantile_scope'\]"):
        seeds.seed_curves([*tiny_seed_runs, other])
    summary = seeds.seed_summary([*tiny_seed_runs, other], by=["quantile_scope"])
    assert summary["group"].unique().tolist() == ["quantile_scope=local", "quantile_scope=global"]
    lone = summary[(summary["group"] == "quantile_scope=global") & (summary["quantity"] == "token 0 reward")].iloc[0]
    assert lone["n"] == 1 and math.isnan(lone["half_width"]) and lone["text"].endswith("(n=1, no interval)")
    twice = other_setting(tiny_seed_runs[0], tmp_path / "copy")  # the same run twice would inflate n
    with pytest.raises(QuarkError, match=r"more than one run of seed \[0\]"):
        seeds.group_runs([*tiny_seed_runs, twice])
    with pytest.raises(QuarkError, match=r"seed is what is averaged over"):
        seeds.group_runs(tiny_seed_runs, by=["seed"])
    config = runs.read_config(tiny_seed_runs[0]).to_dict()
    seeds.check_seed_runs(preset("tiny").replace(**{**config, "seed": 5}), tiny_seed_runs)
    with pytest.raises(QuarkError, match=r"differ in more than the seed \(num_quantiles: this run=5, tiny=3"):
        seeds.check_seed_runs(preset("tiny").replace(**{**config, "seed": 5, "num_quantiles": 5}), tiny_seed_runs)


def test_the_cli_prints_the_table_to_quote(tiny_seed_runs, tmp_path):
    args = [sys.executable, "-m", "quarklab.cli", "seeds", *map(str, tiny_seed_runs), "--csv", str(tmp_path / "s.csv")]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "token 0 − SFT" in proc.stdout and "(n=3)" in proc.stdout and "t(0.975, n−1)" in proc.stdout
    assert pd.read_csv(tmp_path / "s.csv")["n"].max() == 3
    other = other_setting(tiny_seed_runs[0], tmp_path / "k5", num_quantiles=5, seed=3)
    proc = subprocess.run(args[:4] + [str(tiny_seed_runs[0]), str(other)], capture_output=True, text=True)
    assert proc.returncode == 2 and "num_quantiles" in proc.stderr and "Traceback" not in proc.stderr


def test_04_points_average_the_seeds_and_keep_a_lone_run(tiny_seed_runs, tmp_path):
    lone = other_setting(tiny_seed_runs[0], tmp_path / "global", quantile_scope="global")
    points = seeds.tradeoff_points_over_seeds([*tiny_seed_runs, lone], quoted=[{"label": "card", "reward": 3.5}])
    mean = points[points["run"] == "tiny + 2 seeds"]
    assert mean[~mean["quoted"]]["iteration"].tolist() == [0, 2, 2, 2, 2]  # the reference, then 3 tokens + no token
    assert mean[~mean["quoted"]]["n"].tolist() == [3] * 5 and mean["quoted"].sum() == 1
    t0 = mean[mean["group"] == "token 0"].iloc[0]
    assert t0["reward"] == pytest.approx(by_hand([eval_value(d, 2, 0) for d in tiny_seed_runs])[0])
    assert t0["length_hw"] == pytest.approx(by_hand([eval_value(d, 2, 0, "length") for d in tiny_seed_runs])[1])
    assert points["token"].dtype == "Int64" and t0["token"] == 0
    assert mean[mean["group"].isin(["reference", "no token"])]["token"].isna().all()
    assert (points["run"] == "global").sum() == 1 + 2 * 4  # one run of its setting: every iteration, as before
    fig = run_plots.tradeoff_scatter(points)
    for gid in ("perplexity", "length"):
        (ax,) = [ax for ax in fig.axes if ax.get_gid() == gid]
        bars = [c for c in ax.collections if c.get_gid() == "seed_errorbar"]
        assert len(bars) == 2 * 5  # x and y bars for each of the 5 averaged points' groups
        assert sum(len(c.get_segments()) for c in bars) == 2 * 5
    assert any("95 % interval over seeds" in t.get_text() for lg in fig.legends for t in lg.get_texts())


def test_notebooks_02_and_04_draw_the_seeds(tiny_seed_runs, tmp_path):
    """02 opens a finished run (a copy of seed 0's) with the two other seeds' runs; 04 draws all three."""
    run_dir = tmp_path / "demo"
    shutil.copytree(tiny_seed_runs[0], run_dir)
    small = {"num_quantiles": 3, "iterations": 2, "prompts_per_iteration": 6, "samples_per_prompt": 8,
             "extra_config": {"max_new_tokens": 24, "eval_prompts": 8, "eval_max_new_tokens": 24,
                              "epochs_per_iteration": 1, "batch_size": 16}}
    others = [str(d) for d in tiny_seed_runs[1:]]
    run_notebooks(run_dir, {**small, "seed_run_dirs": others}, notebooks=["02_training_iterations.ipynb"],
                  progress=False, cell_timeout=300)
    run_notebooks(run_dir, {"num_quantiles": 3, "extra_run_dirs": others}, notebooks=["04_tradeoffs.ipynb"],
                  progress=False, cell_timeout=300)
    for name in ("02_training_iterations", "04_tradeoffs"):
        book = nbformat.read(run_dir / f"{name}.ipynb", as_version=4)
        pngs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
        assert pngs, name
        assert (run_dir / "figures" / f"{name[:2]}_{'iterations' if name[:2] == '02' else 'tradeoffs'}.png").exists()
    book = nbformat.read(run_dir / "02_training_iterations.ipynb", as_version=4)
    text = json.dumps([c.outputs for c in book.cells if c.cell_type == "code"], ensure_ascii=False)
    assert "mean of 3 seeds" in text and "token 0 − SFT" in text  # the band figure and the table to quote
    got = results(run_dir)
    assert got["02_training_iterations"]["seeds"]["all runs"]["token 0 reward"]["n"] == 3
    assert got["04_tradeoffs"]["points"] == 5  # the seed mean: the reference + 3 tokens + no token at iteration 2
