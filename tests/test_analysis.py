"""quarklab.analysis: the tables behind the figures, from realistic samples and a real metrics.jsonl."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from quarklab import analysis, files
from quarklab.errors import QuarkError
from quarklab.metrics import pareto_mask
from quarklab.quantiles import assign_quantiles, quantile_table
from quarklab.tokens import sorted_tokens
from tables import N_PROMPTS, N_SAMPLES, QUOTED

def test_analysis_needs_no_matplotlib():
    code = "import sys, quarklab.analysis; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------- a run's metrics

def test_eval_rows_keep_greedy_evaluations_with_int64_tokens(metrics5):
    ev = analysis.eval_rows(metrics5)
    assert len(ev) == 1 + 3 * 6  # reference + 3 iterations x (5 tokens + none); sampled and train rows dropped
    assert set(ev["mode"]) == {"greedy"} and set(ev["kind"]) == {"eval"}
    assert ev["token"].dtype == "Int64" and ev["token"].isna().sum() == 1 + 3  # no token: <NA>
    assert set(ev["token"].dropna()) == {0, 1, 2, 3, 4}
    assert ev["iteration"].dtype.kind == "i"
    assert sorted_tokens(ev["token"]) == [0, 1, 2, 3, 4, None]
    assert list(analysis.token_mask(ev["token"], None)) == list(ev["token"].isna())
    two = analysis.token_mask(ev["token"], 2)
    assert two.sum() == 3 and (ev["token"][two] == 2).all()
    # any spelling of the token reads into the one form
    spelled = metrics5.assign(token=metrics5["token"].astype(object).map(lambda t: "none" if pd.isna(t) else str(t)))
    pd.testing.assert_frame_equal(analysis.eval_rows(spelled).drop(columns="token"), ev.drop(columns="token"))
    pd.testing.assert_series_equal(analysis.eval_rows(spelled)["token"], ev["token"])
    train = analysis.train_rows(metrics5)
    assert len(train) == 3 * 5 and sorted(train["iteration"].unique()) == [1, 2, 3]
    with pytest.raises(QuarkError, match="no greedy"):
        analysis.eval_rows(metrics5[metrics5["mode"] != "greedy"])
    with pytest.raises(QuarkError, match="lacks the column"):
        analysis.eval_rows(pd.DataFrame({"reward": [1.0]}))


# ---------------------------------------------------------------------------- quantiles of a scored pool

def test_prompt_quantile_counts(samples):
    k = 4
    r, pid = samples["reward"].to_numpy(), samples["prompt_id"].to_numpy()
    local = analysis.prompt_quantile_counts(samples, k, "local")
    glob = analysis.prompt_quantile_counts(samples, k, "global")
    assert local.shape == glob.shape == (N_PROMPTS, k) and list(glob.columns) == list(range(k))
    assert (local.to_numpy() == N_SAMPLES // k).all()  # every prompt spreads its samples evenly
    assert (glob.sum(axis=1) == N_SAMPLES).all()
    assert len({tuple(row) for row in glob.to_numpy()}) > 1  # global: prompts differ
    means = samples.groupby("prompt_id")["reward"].mean()
    assert list(glob.index) == list(means.sort_values(ascending=False).index)  # best prompt first
    q = assign_quantiles(r, k)
    for p, row in glob.iterrows():
        assert list(row) == [int(((pid == p) & (q == j)).sum()) for j in range(k)]
    assert glob.iloc[0, 0] > glob.iloc[-1, 0]  # the high-baseline prompt fills the best quantile
    with pytest.raises(QuarkError, match="scope"):
        analysis.prompt_quantile_counts(samples, k, "pool")
    with pytest.raises(QuarkError, match="num_quantiles"):
        analysis.prompt_quantile_counts(samples, 0, "local")


def test_counts_and_summary_read_an_assignment_made_once(samples):
    """counts_by_prompt and quantile_table draw on a given assignment: the same tables as assigning by scope."""
    from quarklab.analysis import pools
    from quarklab.quantiles import assign_by_scope

    k = 4
    r, pid = samples["reward"].to_numpy(), samples["prompt_id"].to_numpy()
    for scope in ("global", "local"):
        q = assign_by_scope(r, pid, k, scope)
        pd.testing.assert_frame_equal(analysis.counts_by_prompt(samples, q, k),
                                      analysis.prompt_quantile_counts(samples, k, scope))
        pd.testing.assert_frame_equal(quantile_table(samples, k, scope, quantiles=q), quantile_table(samples, k, scope))
    with pytest.raises(QuarkError, match="quantiles must be one int in 0..3"):
        pools.check_assignment(np.full(len(r), 4), len(r), k)


def test_quantile_contrast(samples):
    table = analysis.quantile_contrast(samples, ks=(5, 2, 3))
    assert list(table.columns) == ["scope", "K", "top", "bottom", "contrast"]
    assert list(table["scope"]) == ["global"] * 3 + ["local"] * 3 and list(table["K"]) == [2, 3, 5] * 2
    assert (table["contrast"] > 0).all()  # the top quantile beats the bottom one
    assert np.allclose(table["contrast"], table["top"] - table["bottom"])
    r = samples["reward"].to_numpy()
    q = assign_quantiles(r, 2)
    first = table.iloc[0]
    assert (first["top"], first["bottom"]) == pytest.approx((r[q == 0].mean(), r[q == 1].mean()))
    # more quantiles than a prompt has samples: local quantile K-1 is empty, so no contrast
    few = samples.groupby("prompt_id").head(3)
    local = analysis.quantile_contrast(few, ks=[5]).set_index("scope")
    assert np.isnan(local.loc["local", "contrast"]) and np.isfinite(local.loc["global", "contrast"])
    with pytest.raises(QuarkError, match="ks"):
        analysis.quantile_contrast(samples, ks=[])
    with pytest.raises(QuarkError, match="non-finite"):
        analysis.quantile_contrast(samples.assign(reward=np.nan))


def test_best_of_n(samples):
    table = analysis.best_of_n(samples, seed=3)
    assert list(table.columns) == ["n", "K", "top", "bottom"]
    assert list(table["n"]) == [2, 4, 8, 16]  # default ns: powers of two up to the 16 available
    assert list(table["K"]) == [2, 4, 5, 5]
    assert (table["top"] > table["bottom"]).all()
    assert table["top"].iloc[-1] > table["top"].iloc[0]  # best of 16 beats best of 2
    # n = all samples: the subsample is the whole pool, whatever the seed
    r, pid = samples["reward"].to_numpy(), samples["prompt_id"].to_numpy()
    q = assign_quantiles(r, 5, groups=pid)
    assert table["top"].iloc[-1] == pytest.approx(r[q == 0].mean())
    pd.testing.assert_frame_equal(analysis.best_of_n(samples, seed=3), table)  # deterministic
    assert not analysis.best_of_n(samples, ns=[2, 4], seed=4).equals(table.head(2))
    with pytest.raises(QuarkError, match="only 16"):
        analysis.best_of_n(samples, ns=[4, 32])
    with pytest.raises(QuarkError, match="seed"):
        analysis.best_of_n(samples, seed="3")


# ---------------------------------------------------------------------------- trade-offs



def test_tradeoff_points(metrics5):
    pts = analysis.tradeoff_points(metrics5, quoted=QUOTED, label_prefix="run A: ")
    assert list(pts.columns) == ["label", "group", "iteration", "token", "reward", "perplexity", "length", "quoted",
                                 "run"]
    assert set(pts["run"]) == {"run A"}  # the prefix names the run
    measured = pts[~pts["quoted"]]
    assert len(measured) == 1 + 3 * 6  # reference + 3 iterations x (5 tokens + none); sampled rows ignored
    assert measured["reward"].max() < 50
    assert measured.iloc[0]["label"] == "run A: SFT (reference)" and measured.iloc[0]["group"] == "reference"
    assert "run A: iter 3 · token 0" in set(pts["label"]) and "run A: iter 3 · no token" in set(pts["label"])
    assert set(measured["group"]) == {"reference", "no token", *[f"token {j}" for j in range(5)]}
    row = pts.set_index("label").loc["run A: iter 2 · token 1"]
    assert (row["reward"], row["perplexity"], row["length"]) == pytest.approx((3.3 + 0.4 - 0.1, 1.25 + 0.04 + 0.01,
                                                                               13 + 6 - 1))
    assert pts["token"].dtype == "Int64"  # the one token form: the quantile index, <NA> for no token
    assert measured.set_index("label")["token"].to_dict()["run A: iter 2 · token 3"] == 3
    assert measured[measured["group"].isin(["reference", "no token"])]["token"].isna().all()
    quoted = pts[pts["quoted"]]
    assert len(quoted) == 1 and quoted.iloc[0]["group"] == "quoted"
    assert pd.isna(quoted.iloc[0]["iteration"]) and pd.isna(quoted.iloc[0]["token"])


def test_pareto_front_is_over_measured_points_only(metrics5):
    pts = analysis.tradeoff_points(metrics5, quoted=QUOTED)
    measured = pts[~pts["quoted"]]
    for x in ("perplexity", "length"):
        front = analysis.pareto_front(pts, x)
        expected = pareto_mask(measured[["reward", x]].to_numpy(), [True, False])
        assert list(front[~pts["quoted"]]) == list(expected)  # the dominating quoted point removes none
        assert not front[pts["quoted"]].any()
        assert front.sum() >= 1
    with pytest.raises(QuarkError, match="'perplexity' or 'length'"):
        analysis.pareto_front(pts, "reward")


def test_tradeoff_points_rejects_bad_quoted(metrics5):
    with pytest.raises(QuarkError, match="reward"):
        analysis.tradeoff_points(metrics5, quoted=[{"label": "x", "perplexity": 1.0}])
    with pytest.raises(QuarkError):
        analysis.tradeoff_points(metrics5, quoted=[{"label": "x", "reward": "high"}])
    with pytest.raises(QuarkError, match="list of dicts"):
        analysis.tradeoff_points(metrics5, quoted=["x"])


def test_reward_only_quote_keeps_missing_figures_missing(metrics5):
    pts = analysis.tradeoff_points(metrics5, quoted=[{"label": "card", "reward": 3.8}])
    last = pts.iloc[-1]
    assert bool(last["quoted"]) and last["reward"] == 3.8
    assert pd.isna(last["perplexity"]) and pd.isna(last["length"])


def test_model_card_table(metrics5):
    pts = analysis.tradeoff_points(metrics5, quoted=[{"label": "card", "reward": 3.14159, "perplexity": 1.23456,
                                                      "length": 25.5551}])
    table = analysis.model_card_table(pts)
    assert list(table.columns) == ["model", "RM", "PPL", "Avg. len", "source"]
    assert list(table["model"]) == list(pts["label"])
    last = table.iloc[-1]
    assert (last["RM"], last["PPL"], last["Avg. len"], last["source"]) == (3.14, 1.23, 25.56, "quoted")
    assert set(table["source"].iloc[:-1]) == {"measured"}
    assert (table[["RM", "PPL", "Avg. len"]].round(2) == table[["RM", "PPL", "Avg. len"]]).all().all()


def test_card_tables_keep_quoted_rows_apart_under_their_caption(metrics5):
    pts = analysis.tradeoff_points(metrics5, quoted=[{"label": "SFT (ALT card)", "reward": 2.89, "perplexity": 1.96,
                                                      "length": 31.25}])
    measured, quoted = analysis.card_tables(pts, reward_name="toy RM score")
    assert list(measured.data["model"]) == list(pts.loc[~pts["quoted"], "label"])
    assert list(quoted.data["model"]) == ["SFT (ALT card)"]
    assert "source" not in measured.data.columns
    assert "toy RM score" in measured.caption
    assert quoted.caption == analysis.QUOTED_CAPTION and "CarperAI" in quoted.caption
    assert "not comparable" in quoted.caption
    html = quoted.to_html()
    assert all(v in html for v in ("2.89", "1.96", "31.25")) and "2.890000" not in html


# ---------------------------------------------------------------------------- the reward a run used

def test_reward_name():
    assert analysis.reward_name("tiny-tldr") == "tiny-tldr score"
    assert (analysis.reward_name("CarperAI/openai_summarize_tldr_rm_checkpoint/pytorch_model.bin")
            == "CarperAI/openai_summarize_tldr_rm_checkpoint score")
    assert analysis.reward_name("OpenAssistant/reward-model-deberta-v3-large-v2") == \
        "OpenAssistant/reward-model-deberta-v3-large-v2 score"
    assert analysis.reward_name("/home/me/models/my-rm/") == "my-rm score"
    with pytest.raises(QuarkError, match="reward spec"):
        analysis.reward_name("")


def test_run_reward_name_reads_config_json_and_refuses_mixed_rewards(tmp_path):
    import json

    for name, spec in (("a", "tiny-tldr"), ("b", "tiny-tldr"), ("c", "CarperAI/rm/pytorch_model.bin")):
        (tmp_path / name).mkdir()
        files.atomic_write_json(tmp_path / name / "config.json", {"reward": spec, "seed": 0})
    assert analysis.run_reward_name(tmp_path / "a") == "tiny-tldr score"
    assert analysis.run_reward_name(tmp_path / "a", tmp_path / "b") == "tiny-tldr score"
    assert analysis.run_reward_name(tmp_path / "c") == "CarperAI/rm score"
    with pytest.raises(QuarkError, match=r"different|one reward") as err:
        analysis.run_reward_name(tmp_path / "a", tmp_path / "c")
    assert "tiny-tldr score" in str(err.value) and "CarperAI/rm score" in str(err.value)
    with pytest.raises(QuarkError, match="config.json"):
        analysis.run_reward_name(tmp_path / "missing")
    (tmp_path / "b" / "config.json").write_text(json.dumps({"seed": 0, "reward": 5}))
    with pytest.raises(QuarkError, match="config.json.*is damaged.*reward"):
        analysis.run_reward_name(tmp_path / "b")


def test_protocol_table_prints_each_figure_with_its_interval_under_a_caption_naming_the_protocol():
    rows = pd.DataFrame([{"model": "demo reference", "conditioning": "none", "prompts": 400, "reward": 3.3012,
                          "reward_low": 3.15, "reward_high": 3.444, "perplexity": 1.274, "perplexity_low": 1.25,
                          "perplexity_high": 1.3, "length": 13.27, "length_low": 11.531, "length_high": 15.05,
                          "cut": 0.0125}])
    table = analysis.protocol_table(rows, "alt-card", reward_name="tiny-tldr score")
    shown = table.data.iloc[0].to_dict()
    assert shown == {"model": "demo reference", "token": "none", "RM": "3.30 [3.15, 3.44]", "PPL": "1.27 [1.25, 1.30]",
                     "Avg. len": "13.27 [11.53, 15.05]", "cut": "0.01", "prompts": 400}
    assert table.caption.startswith("Measured here under the alt-card protocol") and "RM = tiny-tldr score" in table.caption
