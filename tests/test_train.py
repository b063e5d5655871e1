"""The Quark loss and training step on the tiny world's GPT-J, checked against plain forward passes."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import quarklab as ql
from quarklab.config import preset
from quarklab.scoring import build_batch, completion_logits
from quarklab.tokens import add_quantile_tokens, quantile_token
from quarklab.train import alt_target, kept_vocab, quark_loss, rows_batch, table_rows, train_on_rows
from quarklab.trainable import set_trainable


@pytest.fixture(scope="module")
def models(sft, world):
    reference, _ = sft
    policy = ql.load_policy(world.policy)
    tokenizer = ql.load_tokenizer(world.policy)
    ids = add_quantile_tokens(policy, tokenizer, 5, seed=0)
    return policy, reference, tokenizer, ids


@pytest.fixture(scope="module")
def rows(models):
    _, _, tok, _ = models
    prompts = ql.load_prompts("tiny-tldr", "valid", limit=4)
    labels = prompts["label"].tolist()
    return [{"prompt_ids": tok(p)["input_ids"], "completion_ids": tok(" " + l)["input_ids"], "finished": i % 2 == 0,
             "quantile": i % 5} for i, (p, l) in enumerate(zip(prompts["prompt"], labels))]


def test_quantile_tokens_are_added_once_and_prefix_the_prompt_without_a_space(models, tmp_path):
    policy, _, tok, ids = models
    assert [tok.convert_ids_to_tokens(i) for i in ids] == [quantile_token(k) for k in range(5)]
    assert quantile_token(0) == "_QUANTILE_TOKEN_0_"
    assert tok.tokenize("_QUANTILE_TOKEN_0_SUBREDDIT: r/x")[:2] == ["_QUANTILE_TOKEN_0_", "SUBREDDIT"]
    emb = policy.get_input_embeddings().weight
    base = emb[: ids[0]]
    assert (emb[ids].mean() - base.mean()).abs() < 3 * base.std()  # drawn from the existing rows' statistics
    policy.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    released = ql.load_policy(tmp_path)
    released_tok = ql.load_tokenizer(tmp_path)
    before = released.get_input_embeddings().weight.clone()
    again = add_quantile_tokens(released, released_tok, 5)  # a checkpoint that already has them: reused as is
    assert again == ids and len(released_tok) == len(tok)
    assert torch.equal(released.get_input_embeddings().weight, before)
    with pytest.raises(ql.QuarkError, match="num_quantiles"):
        add_quantile_tokens(released, released_tok, 0)


@pytest.fixture(scope="module")
def batch_logits(models, rows):
    """The rows as one batch, with the policy's and the reference's completion logits."""
    policy, reference, tok, ids = models
    batch = build_batch([r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows],
                        [r["finished"] for r in rows], [ids[r["quantile"]] for r in rows], tok.pad_token_id,
                        tok.eos_token_id)
    with torch.no_grad():
        return (batch, completion_logits(policy, batch),
                completion_logits(reference, batch, without_token=True, pad_id=tok.pad_token_id))


def test_completion_block_logits_match_an_unpadded_forward(models, rows, batch_logits):
    policy, reference, tok, ids = models
    batch, pol, ref = batch_logits
    for r, row in enumerate(rows):
        target = row["completion_ids"] + ([tok.eos_token_id] if row["finished"] else [])
        full = [ids[row["quantile"]]] + row["prompt_ids"] + target
        with torch.no_grad():
            alone = policy(torch.tensor([full])).logits[0, -len(target) - 1:-1]
            ref_alone = reference(torch.tensor([row["prompt_ids"] + target])).logits[0, -len(target) - 1:-1]
        assert torch.allclose(pol[r, : len(target)], alone, atol=1e-4)
        assert torch.allclose(ref[r, : len(target)], ref_alone, atol=1e-4)  # the reference never sees the token
        assert batch.labels[r, : len(target)].tolist() == target and (batch.labels[r, len(target):] == -100).all()


def test_loss_terms(models, batch_logits):
    ids = models[3]
    batch, logits, ref_logits = batch_logits
    keep = kept_vocab(logits.shape[-1], ref_logits.shape[-1], ids, "cpu")
    assert keep.numel() == ref_logits.shape[-1] == ids[0]  # the control tokens are dropped
    mask = batch.labels != -100
    loss, stats = quark_loss(logits, batch.labels, keep)  # Quark and ALT: softmax over the whole vocabulary
    logp = logits[mask].log_softmax(-1)
    assert stats["nll"] == pytest.approx(F.nll_loss(logp, batch.labels[mask]).item(), rel=1e-5)
    assert stats["entropy"] == pytest.approx(-(logp.exp() * logp).sum(-1).mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx(stats["nll"])
    _, dropped = quark_loss(logits, batch.labels, keep, loss_vocab="no-quantile-tokens")
    expect = F.cross_entropy(logits[..., : ids[0]][mask], batch.labels[mask])
    assert dropped["nll"] == pytest.approx(expect.item(), rel=1e-5) and dropped["nll"] < stats["nll"]
    _, same = quark_loss(ref_logits, batch.labels, keep, ref_logits=ref_logits, kl_coef=1.0)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6)
    _, fwd = quark_loss(logits, batch.labels, keep, ref_logits=ref_logits, kl_coef=0.05)
    _, rev = quark_loss(logits, batch.labels, keep, ref_logits=ref_logits, kl_coef=0.05, kl_direction="ref||policy")
    assert fwd["kl"] > 0 and rev["kl"] > 0 and fwd["kl"] != pytest.approx(rev["kl"])
    assert fwd["loss"] == pytest.approx(fwd["nll"] + 0.05 * fwd["kl"], rel=1e-5)
    _, ent = quark_loss(logits, batch.labels, keep, entropy_coef=0.06)
    assert ent["loss"] == pytest.approx(ent["nll"] - 0.06 * ent["entropy"], rel=1e-5) and ent["entropy"] > 0


def test_training_lowers_the_loss_and_freezes_lower_blocks(models, rows):
    policy, reference, tok, ids = models
    policy = copy.deepcopy(policy)
    config = preset("tiny", lr=3e-3, batch_size=2, epochs_per_iteration=6, trainable_fraction=0.34, kl_coef=0.05,
                    grad_accum=2)
    bottom = policy.transformer.h[0].attn.q_proj.weight.clone()
    top = policy.transformer.h[-1].attn.q_proj.weight.clone()
    log, _ = train_on_rows(policy, reference, rows, config, ids, tok.pad_token_id, tok.eos_token_id, seed=0)
    assert len(log) == 6  # 2 micro-batches per epoch, accumulated in pairs
    assert log[-1]["nll"] < log[0]["nll"] and {"loss", "nll", "kl", "entropy", "lr"} <= log[0].keys()
    assert torch.equal(policy.transformer.h[0].attn.q_proj.weight, bottom)
    assert not torch.equal(policy.transformer.h[-1].attn.q_proj.weight, top)
    assert set_trainable(policy, 1.0) == sum(p.numel() for p in policy.parameters())


def test_learning_rate_warms_up_from_zero_then_decays_linearly(models, rows):
    policy, _, tok, ids = models
    policy = copy.deepcopy(policy)
    config = preset("tiny", lr=1e-3, batch_size=2, epochs_per_iteration=5, warmup_ratio=0.2, kl_coef=0.0)
    log, _ = train_on_rows(policy, None, rows, config, ids, tok.pad_token_id, tok.eos_token_id, seed=0)
    # 4 rows / 2 per batch x 5 epochs = 10 steps; warmup = int(0.2 * 10) = 2 steps, starting from 0 at step 0
    expected = [0.0, 0.5] + [(10 - s) / 8 for s in range(2, 10)]
    assert [e["lr"] for e in log] == pytest.approx([1e-3 * f for f in expected])
    # DeepSpeed's WarmupDecayLR (ALT's run): a log-shaped warmup, then the same linear decay
    log, _ = train_on_rows(copy.deepcopy(models[0]), None, rows, config.replace(warmup_shape="log", warmup_ratio=0.3),
                           ids, tok.pad_token_id, tok.eos_token_id, seed=0)
    expected = [math.log(t + 1) / math.log(3) for t in range(3)] + [(10 - s) / 7 for s in range(3, 10)]
    assert [e["lr"] for e in log] == pytest.approx([1e-3 * f for f in expected])


@pytest.fixture(scope="module")
def label_rows(world):
    """32 rows: a tiny-world prompt and its reference summary, as the tiny tokenizer encodes them."""
    tok = ql.load_tokenizer(world.policy)
    prompts = ql.load_prompts("tiny-tldr", "train", limit=32)
    return [{"prompt_ids": tok(p)["input_ids"], "completion_ids": tok(" " + l)["input_ids"], "finished": True,
             "quantile": i % 5} for i, (p, l) in enumerate(zip(prompts["prompt"], prompts["label"]))]


def trained_delta(world, rows, dtype, **changes):
    """(update of every weight, the policy after training) for the tiny SFT loaded in ``dtype``, lr 2e-5."""
    policy, tok = ql.load_policy(world.policy, dtype=dtype), ql.load_tokenizer(world.policy)
    ids = add_quantile_tokens(policy, tok, 5, seed=0)
    before = [p.detach().float().clone() for p in policy.parameters()]
    config = preset("tiny", lr=2e-5, batch_size=8, epochs_per_iteration=40, kl_coef=0.0, dtype=dtype, **changes)
    log, _ = train_on_rows(policy, None, rows, config, ids, tok.pad_token_id, tok.eos_token_id, seed=0)
    assert len(log) == 160
    return torch.cat([(p.detach().float() - b).flatten() for p, b in zip(policy.parameters(), before)]), policy


@pytest.fixture(scope="module")
def fp32_delta(world, label_rows):
    return trained_delta(world, label_rows, "float32")[0]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_weights_train_like_float32_on_master_weights(world, label_rows, fp32_delta, dtype):
    """A policy loaded in bf16 (autocast bf16) or fp16 (autocast fp16 + GradScaler) moves as the fp32 run does,
    and comes back in its own dtype (what sampling and the checkpoint use). In-place bf16 AdamW moved 0.24x as far
    and left 93 % of these weights unchanged."""
    delta, policy = trained_delta(world, label_rows, dtype)
    assert {p.dtype for p in policy.parameters()} == {getattr(torch, dtype)}
    ratio = delta.norm() / fp32_delta.norm()
    assert 0.7 < ratio < 1.3
    moved = fp32_delta != 0
    assert (delta[moved] == 0).float().mean() < 0.2


def test_autocast_on_float32_weights_keeps_them_float32(world, label_rows, fp32_delta):
    delta, policy = trained_delta(world, label_rows, "float32", precision="bf16")
    assert {p.dtype for p in policy.parameters()} == {torch.float32}
    assert 0.7 < delta.norm() / fp32_delta.norm() < 1.3


def test_float32_compute_on_half_weights_is_refused():
    with pytest.raises(ql.QuarkError, match="precision='fp32' does not fit dtype='bfloat16'"):
        preset("tiny", dtype="bfloat16", precision="fp32")


def test_a_quantile_token_in_a_completion_is_refused(models, rows):
    policy, _, tok, ids = models
    bad = [dict(r) for r in rows]
    bad[2]["completion_ids"] = bad[2]["completion_ids"][:3] + [ids[1]]
    with pytest.raises(ql.QuarkError, match=f"training row 2 has quantile token id {ids[1]}.*suppress"):
        train_on_rows(policy, None, bad, preset("tiny"), ids, tok.pad_token_id, tok.eos_token_id, seed=0)


def test_gradient_checkpointing_keeps_fewer_activations_and_trains_the_same(models, rows):
    policy, reference, tok, ids = models
    config = preset("tiny", lr=1e-3, batch_size=2, epochs_per_iteration=2, kl_coef=0.05)
    results = {}
    for on in (False, True):
        model, saved = copy.deepcopy(policy), [0]

        def keep(t):
            saved[0] += t.numel()  # every tensor autograd keeps for the backward pass
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            log, _ = train_on_rows(model, reference, rows, config.replace(gradient_checkpointing=on), ids,
                                   tok.pad_token_id, tok.eos_token_id, seed=0)
        results[on] = (log, saved[0], model)
    assert results[True][1] < results[False][1] / 3  # blocks' activations recomputed, not kept
    assert [e["loss"] for e in results[True][0]] == pytest.approx([e["loss"] for e in results[False][0]], rel=1e-5)
    for a, b in zip(results[False][2].parameters(), results[True][2].parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert not results[True][2].is_activation_checkpointing  # switched off again for sampling


def test_a_trainer_state_continues_the_schedule_across_iterations(models, rows, tmp_path):
    """pool_strategy "quark": the optimizer, schedule and scaler of one call go on in the next, through the file a
    checkpoint holds, as if the steps had run in one call."""
    from quarklab import runs
    from quarklab.train import TrainerState

    policy, _, tok, ids = models
    config = preset("tiny", lr=1e-3, batch_size=2, pool_strategy="quark", steps_per_iteration=2, iterations=2,
                    warmup_ratio=0.25, kl_coef=0.0)
    once, _ = train_on_rows(copy.deepcopy(policy), None, rows, config.replace(steps_per_iteration=4, iterations=1),
                            ids, tok.pad_token_id, tok.eos_token_id, seed=0)
    model = copy.deepcopy(policy)
    first, state = train_on_rows(model, None, rows, config, ids, tok.pad_token_id, tok.eos_token_id, seed=0)
    assert isinstance(state, TrainerState) and not state.by_engine and state.weights is None
    assert state.trained_by["engine"] == "none" and state.trained_by["processes"] == 1
    assert list(state.saved()) == ["optimizer", "scheduler", "scaler"]
    torch.save(state.saved(), tmp_path / runs.TRAINER_STATE)
    again = TrainerState.from_saved(torch.load(tmp_path / runs.TRAINER_STATE, weights_only=True))
    second, _ = train_on_rows(model, None, rows, config, ids, tok.pad_token_id, tok.eos_token_id, seed=1, state=again)
    assert [e["lr"] for e in first + second] == pytest.approx([e["lr"] for e in once])
    assert [e["lr"] for e in first + second] == pytest.approx([0.0, 1e-3, 1e-3 * 2 / 3, 1e-3 / 3])


# ------------------------------------------------------------------ training targets: the sampled ids, or ALT's rule

@pytest.fixture(scope="module")
def tok(world):
    return ql.load_tokenizer(world.policy)


def test_alts_target_is_the_stripped_text_after_a_space_with_eos_unless_cut_mid_sentence_at_the_limit(tok):
    names = lambda ids: tok.convert_ids_to_tokens(ids)  # noqa: E731
    # "He quit the job." is 6 tokens, H e quit the job . (with or without the leading space)
    assert names(tok("He quit the job.")["input_ids"]) == ["H", "e", "Ġquit", "Ġthe", "Ġjob", "."]
    ids, eos = alt_target(tok, "He quit the job.", 6)
    assert names(ids) == ["ĠH", "e", "Ġquit", "Ġthe", "Ġjob", "."] and eos  # cut at the limit, but on a "."
    assert alt_target(tok, "He quit the jo", 6) == (tok(" He quit the jo")["input_ids"], False)  # cut mid-word
    assert alt_target(tok, "He quit the jo", 7)[1]  # 6 tokens under a limit of 7: it ended, so EOS
    # W as it legal ? (5 tokens) and I am fine ! (4): cut at the limit on a "?" and a "!"
    assert alt_target(tok, "Was it legal?", 5)[1] and alt_target(tok, "I am fine!", 4)[1]
    # leading and trailing spaces go; the count is of the stripped text, not of " " + text: "Roommate" is
    # R oommate (2 tokens) at the start of a text, ĠRoommate (1) after a space
    assert names(tok("Roommate stole my rent")["input_ids"]) == ["R", "oommate", "Ġsto", "le", "Ġmy", "Ġrent"]
    ids, eos = alt_target(tok, "  Roommate stole my rent \n", 6)
    assert names(ids) == ["ĠRoommate", "Ġsto", "le", "Ġmy", "Ġrent"] and not eos  # 6 stripped tokens = the limit
    assert alt_target(tok, "  Roommate stole my rent \n", 5) == (ids, True)  # 6 tokens: not at a limit of 5
    assert alt_target(tok, "Roommate stole my rent. ", 6) == (tok(" Roommate stole my rent.")["input_ids"], True)
    assert alt_target(tok, "   ", 1) == ([tok.convert_tokens_to_ids("Ġ")], True)  # nothing: a space, then EOS


def test_training_rows_take_the_sampled_ids_or_alts_targets_and_leave_the_pool_alone(tok):
    sampled = [tok(" He quit the jo ")["input_ids"], tok(" Roommate stole my rent.")["input_ids"], [9, 9]]
    pool = pd.DataFrame({"prompt_ids": [[5, 6], [7], [8]], "quantile": [0, 2, 1], "finished": [False, False, True],
                         "completion_ids": sampled, "completion": [" He quit the jo ", " Roommate stole my rent.", ""]})
    before = pool.copy(deep=True)
    rows = table_rows(pool)  # "sampled": the pool's ids, EOS as sampled
    assert [(r["completion_ids"], r["finished"]) for r in rows] == [(sampled[0], False), (sampled[1], False),
                                                                     ([9, 9], True)]
    rows = table_rows(pool, "alt", tok, 6)  # a limit of 6 tokens
    assert [(r["prompt_ids"], r["quantile"]) for r in rows] == [([5, 6], 0), ([7], 2), ([8], 1)]
    assert [r["completion_ids"] for r in rows] == [tok(" He quit the jo")["input_ids"],
                                                   tok(" Roommate stole my rent.")["input_ids"], tok(" ")["input_ids"]]
    assert [r["finished"] for r in rows] == [False, True, True]  # cut mid-word at 6; ends in "."; nothing sampled
    pd.testing.assert_frame_equal(pool, before)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    batch = rows_batch(rows, [100, 101, 102], pad, eos)  # what both training loops lay out from the rows
    n = [len(r["completion_ids"]) for r in rows]
    assert batch.labels[0].tolist()[: n[0] + 1] == rows[0]["completion_ids"] + [-100]  # no EOS trained
    assert batch.labels[1].tolist()[: n[1] + 1] == rows[1]["completion_ids"] + [eos]
    assert batch.labels[2].tolist()[:2] == rows[2]["completion_ids"] + [eos]


def test_bad_training_target_settings_are_one_clear_error(tok):
    pool = pd.DataFrame({"prompt_ids": [[5]], "quantile": [0], "finished": [True], "completion_ids": [[9]]})
    with pytest.raises(ql.QuarkError, match="train_targets must be one of .*'sampled', 'alt'.*got 'ppo'"):
        table_rows(pool, "ppo")
    with pytest.raises(ql.QuarkError, match="pass the tokenizer and the token limit"):
        table_rows(pool, "alt")
    with pytest.raises(ql.QuarkError, match="no 'completion' column"):
        table_rows(pool, "alt", tok, 6)
