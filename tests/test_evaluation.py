"""quarklab.evaluation: perplexity under the reference, scored from the samples' own prompt ids, or as ALT scores it."""

from __future__ import annotations

import numpy as np
import pytest

import quarklab as ql
from tables import NEW


def test_perplexity_is_scored_given_the_samples_prompt_ids(sft, prompts):
    from quarklab.evaluation import reference_perplexity

    model, tokenizer = sft
    samples = ql.sample(model, tokenizer, prompts, do_sample=False, max_new_tokens=NEW)
    ppl = reference_perplexity(model, tokenizer, samples)
    assert (ppl >= 1).all()
    np.testing.assert_array_equal(reference_perplexity(model, tokenizer, samples.assign(prompt="x\nTL;DR:")), ppl)
    tail_only = samples.assign(prompt_ids=[ids[-3:] for ids in samples["prompt_ids"]])
    assert not np.allclose(reference_perplexity(model, tokenizer, tail_only), ppl)
    with pytest.raises(ql.QuarkError, match="prompt_ids"):
        reference_perplexity(model, tokenizer, samples.drop(columns="prompt_ids"))


def test_perplexity_as_alt_scores_the_retokenized_text_without_eos(sft, prompts):
    """ALT's alt/perplexity.py: the completion's text tokenized again, no EOS, exp(mean NLL) per sample."""
    import torch

    from quarklab.evaluation import reference_perplexity

    model, tokenizer = sft
    samples = ql.sample(model, tokenizer, prompts, do_sample=False, max_new_tokens=NEW)
    assert samples["finished"].any()
    alt = reference_perplexity(model, tokenizer, samples)
    with_eos = reference_perplexity(model, tokenizer, samples, mode="sampled-ids")
    for i, row in samples.iterrows():
        target = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([list(row["prompt_ids"]) + target])).logits[0, -len(target) - 1:-1]
        nll = torch.nn.functional.cross_entropy(logits, torch.tensor(target))
        assert alt[i] == pytest.approx(nll.exp().item(), rel=1e-4)
    assert not np.allclose(alt[samples["finished"]], with_eos[samples["finished"]])  # EOS counted or not
    empty = samples.assign(completion="", completion_ids=[[]] * len(samples), finished=False)
    assert np.isnan(reference_perplexity(model, tokenizer, empty)).all()  # nothing to score: left out of means
