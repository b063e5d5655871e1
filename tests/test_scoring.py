"""quarklab.scoring: one batch layout for training, perplexity and the LM judge, [token; prompt] left-padded and the
completion right-padded, scored on the tiny world's GPT-J against one row at a time (the completion-block logits
against an unpadded forward are checked in test_train)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from quarklab.errors import QuarkError
from quarklab.scoring import build_batch, completion_nll

PAD, EOS = 0, 1


def test_prompts_are_left_padded_completions_right_padded_and_eos_labelled_only_when_finished():
    batch = build_batch([[5, 6, 7], [8]], [[9], [10, 11]], [True, False], [100, 101], PAD, EOS)
    assert batch.input_ids.tolist() == [[100, 5, 6, 7, 9, 1], [PAD, PAD, 101, 8, 10, 11]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]
    assert batch.labels.tolist() == [[9, 1], [10, 11]]  # the first row finished: its EOS is a label
    assert batch.token_col.tolist() == [0, 2] and batch.has_token
    plain = build_batch([[5, 6, 7], [8]], [[9], [10, 11]], [False, False], None, PAD, EOS)
    assert plain.input_ids.tolist() == [[5, 6, 7, 9, PAD], [PAD, PAD, 8, 10, 11]] and not plain.has_token
    assert plain.labels.tolist() == [[9, -100], [10, 11]]


def test_a_completion_with_nothing_to_score_is_one_error():
    with pytest.raises(QuarkError, match="no tokens and no EOS"):
        build_batch([[5]], [[]], [False], None, PAD, EOS)


def test_batched_nll_equals_each_row_scored_alone(sft):
    model, tok = sft
    prompts = [tok(t)["input_ids"] for t in ("TITLE: a\nPOST: my dog ran\nTL;DR:", "POST: rent went up again\nTL;DR:")]
    completions = [tok(" dog ran away")["input_ids"], tok(" rent is up")["input_ids"]]
    nll = completion_nll(model, prompts, completions, [True, False], tok.pad_token_id, tok.eos_token_id)
    for i, (p, c, done) in enumerate(zip(prompts, completions, [True, False])):
        target = c + ([tok.eos_token_id] if done else [])
        with torch.no_grad():
            logits = model(torch.tensor([p + target])).logits[0, len(p) - 1:-1]
        alone = F.cross_entropy(logits.float(), torch.tensor(target)).item()
        assert math.isclose(nll[i], alone, rel_tol=1e-4)
