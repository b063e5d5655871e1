"""The Reddit TL;DR prompt layout, in one place: parsing it, writing it, and fitting it to a context.

A prompt in the layout of ``CarperAI/openai_summarize_tldr`` reads::

    SUBREDDIT: r/<sub>
    TITLE: <title>
    POST: <post>
    TL;DR:

Free text works everywhere too: it has no head, and :func:`as_prompt` gives it the ``TL;DR:`` tail.
A prompt is encoded once, cut to the model's budget (:func:`encode_prompt`), and its ids travel
with it from then on (sampling writes them into the pool, training reads them back).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import QuarkError
from .models import context_length

TLDR_MARK = "TL;DR:"
TLDR_TAIL = "\n" + TLDR_MARK
POST_MARK = "\nPOST:"
_LAYOUT = re.compile(r"^SUBREDDIT: r/(\S+)\nTITLE: (.*?)\nPOST: (.*)\nTL;DR:\s*$", re.S)

# The GPT-4 judging prompt for TL;DR summaries of Rafailov et al. 2023, "Direct Preference Optimization"
# (arXiv:2305.18290), its appendix on GPT-4 evaluation: the "GPT-4 (C)" (concise) prompt, the one ALT (Abadal Lloret
# et al. 2024, arXiv:2407.16970) follows for TL;DR. Checked against public copies of it (e.g. judging scripts that
# quote arxiv.org/pdf/2305.18290); only the blank lines between its parts vary between copies.
JUDGE_PROMPT = (
    "Which of the following summaries does a better job of summarizing the most important points in the given "
    "forum post, without including unimportant or irrelevant details? A good summary is both precise and concise."
    "\n\nPost:\n{post}\n\nSummary A:\n{a}\n\nSummary B:\n{b}\n\n"
    "FIRST provide a one-sentence comparison of the two summaries, explaining which you prefer and why. "
    "SECOND, on a new line, state only \"A\" or \"B\" to indicate your choice. Your response should use the format:"
    "\nComparison: <one-sentence comparison and explanation>\nPreferred: <\"A\" or \"B\">"
)


@dataclass(frozen=True)
class Post:
    """The parts of a TL;DR prompt; ``subreddit`` and ``title`` are empty for free text."""

    subreddit: str
    title: str
    body: str


def parse(prompt: str) -> Post:
    """The parts of ``prompt``: the exact layout, or else whatever ``SUBREDDIT:``/``TITLE:``/``POST:``
    lines it has (free text is all body); the ``TL;DR:`` tail is dropped."""
    m = _LAYOUT.match(prompt)
    if m:
        return Post(*m.groups())
    text = prompt.rsplit(TLDR_MARK, 1)[0]
    sub = re.search(r"^SUBREDDIT:\s*(?:r/)?(\S*)", text, re.MULTILINE)
    title = re.search(r"^TITLE:(.*)$", text, re.MULTILINE)
    body = re.sub(r"^(SUBREDDIT:.*|TITLE:.*)$", "", text, flags=re.MULTILINE)
    body = re.sub(r"^POST:\s*", "", body, flags=re.MULTILINE)
    return Post(sub.group(1) if sub else "", title.group(1).strip() if title else "", body.strip())


def format_prompt(subreddit: str, title: str, body: str) -> str:
    """The prompt for a post, in the exact layout."""
    return f"SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {body}{TLDR_TAIL}"


def as_prompt(text: str) -> str:
    """Free text as a prompt: stripped, with ``"\\nTL;DR:"`` appended unless it already ends with ``TL;DR:``."""
    text = text.strip()
    return text if text.endswith(TLDR_MARK) else text + TLDR_TAIL


def title_of(prompt: str) -> str:
    """The ``TITLE`` of a prompt, else its first non-empty line."""
    post = parse(prompt)
    if post.title:
        return post.title
    return next((line.strip() for line in str(prompt).splitlines() if line.strip()), "")


def shorten(prompt: str, max_chars: int = 600) -> str:
    """``prompt`` in about ``max_chars`` characters: the post body is cut in the middle with an
    ellipsis; the head (``SUBREDDIT``/``TITLE`` up to ``POST:``) and the trailing ``TL;DR:`` stay."""
    if max_chars is None or len(prompt) <= max_chars:
        return prompt
    end = prompt.rfind(TLDR_TAIL)
    end = end if end >= 0 else len(prompt)
    tail = prompt[end:]
    post = prompt.find(POST_MARK)
    head_end = post + len(POST_MARK) if 0 <= post < end else 0
    if head_end == 0:  # no POST: keep the TITLE line whole when there is one
        title = prompt.find("TITLE:")
        if 0 <= title < end:
            nl = prompt.find("\n", title)
            head_end = nl if 0 <= nl < end else end
    head, body = prompt[:head_end], prompt[head_end:end]
    room = max(max_chars - len(head) - len(tail) - 3, 40)
    if len(body) <= room:
        return prompt
    left = room // 2
    right = room - left
    return f"{head}{body[:left].rstrip()} … {body[len(body) - right:].lstrip()}{tail}"


def post_of(prompt: str) -> str:
    """The post a judge reads: the prompt without its trailing ``TL;DR:`` scaffolding."""
    text = prompt.rstrip()
    return text[: -len(TLDR_MARK)].rstrip() if text.endswith(TLDR_MARK) else text


def prompt_table(prompts) -> pd.DataFrame:
    """``prompts`` (a str, a list of str, a Series, or a DataFrame with ``prompt``) as ``prompt_id``, ``prompt``."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, pd.DataFrame):
        if "prompt" not in prompts.columns:
            raise QuarkError(f"the prompts table has no 'prompt' column (columns: {list(prompts.columns)})")
        table = prompts[["prompt"] + (["prompt_id"] if "prompt_id" in prompts.columns else [])].reset_index(drop=True)
    else:
        table = pd.DataFrame({"prompt": list(prompts)})
    if "prompt_id" not in table.columns:
        table.insert(0, "prompt_id", range(len(table)))
    if len(table) == 0:
        raise QuarkError("no prompts given")
    bad = table["prompt"].map(lambda p: not isinstance(p, str) or not p.strip())
    if bad.any():
        raise QuarkError(f"{int(bad.sum())} prompts are empty or not text "
                         f"(first at position {int(np.flatnonzero(bad.to_numpy())[0])})")
    return table[["prompt_id", "prompt"]]


def prompt_budget(model, max_new_tokens: int) -> int:
    """Prompt tokens that fit beside ``max_new_tokens`` and one quantile token, with or without it:
    a prompt is cut the same way whether or not a token precedes it. ``model`` is a model or a
    config (see :func:`quarklab.models.context_length`)."""
    return context_length(model) - max_new_tokens - 1


def encode_prompt(tokenizer, prompt: str, budget: int) -> tuple[list[int], bool]:
    """Token ids of ``prompt`` in at most ``budget`` tokens, and whether it was cut.

    A prompt that does not fit loses the start of its post body; the head up to ``POST:``
    stays while it fits with the ``TL;DR:`` tail, which always stays.
    """
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(ids) <= budget:
        return ids, False
    body_end = prompt.rfind(TLDR_TAIL)
    body_end = body_end if body_end >= 0 else len(prompt)
    tail = tokenizer(prompt[body_end:], add_special_tokens=False)["input_ids"]
    if len(tail) >= budget:
        raise QuarkError(f"the context leaves {budget} tokens for the prompt, fewer than its "
                         f"{len(tail)}-token ending {prompt[body_end:]!r}: lower max_new_tokens")
    cut = prompt.find(POST_MARK)
    head_end = cut + len(POST_MARK) if 0 <= cut < body_end else 0
    head = tokenizer(prompt[:head_end], add_special_tokens=False)["input_ids"] if head_end else []
    if len(head) + len(tail) >= budget:  # no room for the head: keep the end of everything before the tail
        before = tokenizer(prompt[:body_end], add_special_tokens=False)["input_ids"]
        return before[len(before) - (budget - len(tail)):] + tail, True
    body = tokenizer(prompt[head_end:body_end], add_special_tokens=False)["input_ids"]
    keep = budget - len(head) - len(tail)
    return head + body[len(body) - keep:] + tail, True


def prompt_lists(prompts) -> tuple[list[str], list]:
    """``(texts, prompt_ids)`` of :func:`prompt_table`."""
    table = prompt_table(prompts)
    return table["prompt"].tolist(), table["prompt_id"].tolist()
