"""What is particular to a task: how text becomes a prompt, how a prompt is cut to the context, shown and judged,
and which reward and prompts a run takes when none are named.

Two tasks, by name (:data:`TASKS`, a run's ``task`` field):

* ``"tldr"``: a Reddit post in the TL;DR layout, summarized after its ``TL;DR:`` tail (:mod:`quarklab.tldr`);
  a prompt too long for the context loses the start of its post body.
* ``"continuation"``: the opening of a text, continued (open-ended generation, as Quark's repetition
  unlearning); a prompt too long for the context keeps its end, the words the continuation follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import tldr
from .config import TASK_DEFAULTS
from .errors import QuarkError

CONTINUATION_JUDGE_PROMPT = (
    "Which of the following continuations of the given text is more fluent and coherent, and less repetitive? A "
    "good continuation reads naturally after the text, stays on its subject and does not repeat itself."
    "\n\nText:\n{post}\n\nContinuation A:\n{a}\n\nContinuation B:\n{b}\n\n"
    "FIRST provide a one-sentence comparison of the two continuations, explaining which you prefer and why. "
    "SECOND, on a new line, state only \"A\" or \"B\" to indicate your choice. Your response should use the format:"
    "\nComparison: <one-sentence comparison and explanation>\nPreferred: <\"A\" or \"B\">"
)
"""The continuation task's judging prompt: the TL;DR one's strict answer format (``Preferred: A``), so the
judges parse it alike (:func:`quarklab.judge.parse_answer`)."""


@dataclass(frozen=True)
class Task:
    """One task: its functions on prompts, its judging prompt, and its default reward and dataset."""

    name: str
    as_prompt: Callable[[str], str]  # free text as a prompt
    encode_prompt: Callable[..., tuple[list[int], bool]]  # (tokenizer, prompt, budget) -> (ids, cut)
    shorten: Callable[..., str]  # (prompt, max_chars) -> the prompt for display
    title_of: Callable[[str], str]  # a short name of a prompt
    post_of: Callable[[str], str]  # what the judge reads of a prompt
    judge_template: str  # the judging prompt, with {post}, {a} and {b}
    free_text: str  # what becomes of free text, in words (widgets)
    example: str  # a prompt's shape, for a model card
    alt_card: bool  # whether the ALT model card's TL;DR figures are comparable with this task's runs

    @property
    def reward(self) -> str:
        return TASK_DEFAULTS[self.name]["reward"]

    @property
    def dataset(self) -> str:
        return TASK_DEFAULTS[self.name]["dataset"]

    def judge_prompt(self, prompt: str, a: str, b: str) -> str:
        """The judging prompt for ``prompt`` and the two texts shown as A and B (stripped)."""
        return self.judge_template.format(post=self.post_of(prompt), a=a.strip(), b=b.strip())


def continuation_prompt(text: str) -> str:
    """Free text as a continuation prompt: stripped, nothing added."""
    return text.strip()


def encode_end(tokenizer, prompt: str, budget: int) -> tuple[list[int], bool]:
    """Token ids of ``prompt`` in at most ``budget`` tokens, and whether it was cut: a prompt that does not fit
    keeps its last ``budget`` tokens (the words the continuation follows)."""
    if budget < 1:
        raise QuarkError(f"the context leaves {budget} tokens for the prompt: lower max_new_tokens")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return (ids, False) if len(ids) <= budget else (ids[len(ids) - budget:], True)


def shorten_middle(prompt: str, max_chars: int = 600) -> str:
    """``prompt`` in about ``max_chars`` characters, cut in the middle with an ellipsis (its start and its end,
    which the continuation follows, stay)."""
    if max_chars is None or len(prompt) <= max_chars:
        return prompt
    room = max(max_chars - 3, 40)
    left = room // 2
    return f"{prompt[:left].rstrip()} … {prompt[len(prompt) - (room - left):].lstrip()}"


def opening_words(prompt: str, words: int = 8) -> str:
    """The first ``words`` words of ``prompt`` (with "…" when there are more)."""
    parts = str(prompt).split()
    return " ".join(parts[:words]) + (" …" if len(parts) > words else "")


TASKS: dict[str, Task] = {
    "tldr": Task("tldr", tldr.as_prompt, tldr.encode_prompt, tldr.shorten, tldr.title_of, tldr.post_of,
                 tldr.JUDGE_PROMPT, free_text='"TL;DR:" is appended if missing',
                 example="SUBREDDIT: r/...\nTITLE: ...\nPOST: ...\nTL;DR:", alt_card=True),
    "continuation": Task("continuation", continuation_prompt, encode_end, shorten_middle, opening_words,
                         continuation_prompt, CONTINUATION_JUDGE_PROMPT,
                         free_text="the text is continued as written", example="The opening of a text to continue.",
                         alt_card=False),
}
"""The tasks by name; a run's ``task`` field names one."""


def get_task(task: str | Task = "tldr") -> Task:
    """The task named ``task`` (a :class:`Task` is returned as given); one QuarkError naming the known tasks."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise QuarkError(f"unknown task {task!r}: choose from {', '.join(map(repr, TASKS))}")
    return TASKS[task]
