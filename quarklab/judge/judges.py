"""Three judges behind one small interface, and the TL;DR judging prompt with its strict answer format.

A judge has an ``id`` (what it is: kind and model, and for HTTP the base URL; never a key), a
``batch_size`` (how many judgments it makes per call; the cache is written after each call) and
``judge(items) -> list[(raw, verdict)]``: for each ``(prompt, summary_a, summary_b)``, in that one order,
its raw answer text and its verdict, ``"A"``, ``"B"``, ``"tie"`` or ``"malformed"``.
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import time
import urllib.error
import urllib.request

import numpy as np

from ..errors import QuarkError
from ..tldr import TLDR_MARK

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
VERDICTS = ("A", "B", "tie", "malformed")
DEFAULT_BASE_URL = "https://api.openai.com/v1"
_PREFERRED = re.compile(r"^\s*Preferred:\s*\"?([AB])\"?\s*\.?\s*$")


def post_of(prompt: str) -> str:
    """The post a judge reads: the prompt without its trailing ``TL;DR:`` scaffolding."""
    text = prompt.rstrip()
    return text[: -len(TLDR_MARK)].rstrip() if text.endswith(TLDR_MARK) else text


def judge_prompt(prompt: str, a: str, b: str) -> str:
    """The judging prompt for the post of ``prompt`` and the summaries shown as A and B."""
    return JUDGE_PROMPT.format(post=post_of(prompt), a=a.strip(), b=b.strip())


def parse_answer(text: str) -> str:
    """``"A"`` or ``"B"`` when exactly one line of ``text`` reads ``Preferred: A`` (or ``B``, quotes allowed);
    anything else, including two such lines that disagree, is ``"malformed"``."""
    found = {m.group(1) for line in str(text).splitlines() if (m := _PREFERRED.match(line))}
    return found.pop() if len(found) == 1 else "malformed"


class RewardJudge:
    """A reward model as judge: the summary with the higher reward wins; equal rewards are a tie.

    Rewards are kept per ``(prompt, summary)``: the second order of a pair reuses the first's rewards."""

    batch_size = 64

    def __init__(self, reward="tiny-tldr", **load_kwargs):
        from ..rewards import load_reward

        self.reward = load_reward(reward, **load_kwargs)
        self.id = f"rm:{self.reward.name}"
        self.rewards: dict[tuple[str, str], float] = {}  # (prompt, summary) -> reward

    def judge(self, items):
        unseen = list(dict.fromkeys(key for p, a, b in items for key in ((p, a), (p, b)) if key not in self.rewards))
        if unseen:
            values = self.reward([p for p, _ in unseen], [s for _, s in unseen])
            self.rewards.update(zip(unseen, values))
        pairs = [(self.rewards[(p, a)], self.rewards[(p, b)]) for p, a, b in items]
        return [(f"reward A = {x:.6g}, reward B = {y:.6g}", "A" if x > y else "B" if y > x else "tie")
                for x, y in pairs]


class LMJudge:
    """A local causal LM as judge: compares log p(" A") and log p(" B") after the judging prompt and
    ``"\\nPreferred:"`` (the log-probability of each answer's tokens, summed). A prompt longer than the
    model's context keeps its end (the summaries and the instruction) and loses the start of the post."""

    def __init__(self, model="tiny-tldr", *, device="auto", batch_size: int = 8):
        from ..hub import resolve_model
        from ..models import load_policy, load_tokenizer

        source = resolve_model(model)
        self.model, self.tokenizer = load_policy(source, device=device), load_tokenizer(source)
        self.id, self.batch_size = f"lm:{os.fspath(source)}", batch_size
        self.answers = {k: self.tokenizer(f" {k}", add_special_tokens=False)["input_ids"] for k in ("A", "B")}

    def judge(self, items):
        from ..models import context_length
        from ..scoring import completion_nll

        room = context_length(self.model, self.tokenizer) - max(map(len, self.answers.values()))
        prompts = [self.tokenizer(judge_prompt(*item) + "\nPreferred:", add_special_tokens=False)["input_ids"]
                   for item in items]
        prompts = [ids[-room:] for ids in prompts]
        if all(len(ids) == 1 for ids in self.answers.values()):
            logp = self._next_token_logp(prompts)  # one forward pass reads both answers
        else:
            logp = {}
            for k, ids in self.answers.items():
                nll = completion_nll(self.model, prompts, [ids] * len(prompts), [False] * len(prompts),
                                     self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, self.batch_size)
                logp[k] = -nll * len(ids)
        return [(f"log p(' A') = {x:.6g}, log p(' B') = {y:.6g}", "A" if x > y else "B" if y > x else "tie")
                for x, y in zip(logp["A"], logp["B"])]

    def _next_token_logp(self, prompts: list[list[int]]) -> dict[str, np.ndarray]:
        """log p(answer | prompt) of each one-token answer, from the log-softmax at each prompt's last position:
        the batches and layout of :func:`~quarklab.scoring.completion_nll`, one forward pass for both answers."""
        import torch
        import torch.nn.functional as F

        from ..scoring import build_batch, completion_logits

        ids = {k: v[0] for k, v in self.answers.items()}
        out = {k: np.zeros(len(prompts)) for k in ids}
        device = next(self.model.parameters()).device
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        with torch.inference_mode():
            for b in range(0, len(order), self.batch_size):
                idx = order[b:b + self.batch_size]
                batch = build_batch([prompts[i] for i in idx], [[ids["A"]]] * len(idx), [False] * len(idx), None,
                                    self.tokenizer.pad_token_id, self.tokenizer.eos_token_id).to(device)
                logp = F.log_softmax(completion_logits(self.model, batch).float(), dim=-1)[:, 0]
                for k, i in ids.items():
                    out[k][idx] = logp[:, i].cpu().numpy()
        return out


class HTTPJudge:
    """Any OpenAI-compatible chat endpoint: POST ``{base_url}/chat/completions`` at temperature 0.

    The API key is read from the environment variable named ``api_key_env`` at each request and sent
    only in the ``Authorization`` header: it is in no id, record, cache line, file or message.
    ``api_key_env=None`` sends no key (a local server). Rate limits (429), server errors (5xx) and
    connection errors are retried up to ``max_tries`` times, waiting ``backoff_s * 2**n`` (at most
    ``max_wait_s``) or what ``Retry-After`` asks; another 4xx fails at once. ``waits`` lists the seconds
    waited before each retry.
    """

    batch_size = 1

    def __init__(self, model: str, base_url: str = DEFAULT_BASE_URL, *,
                 api_key_env: str | None = "OPENAI_API_KEY", max_tries: int = 6, backoff_s: float = 1.0,
                 max_wait_s: float = 120.0, timeout_s: float = 120.0, max_tokens: int = 256):
        if not model or not isinstance(model, str):
            raise QuarkError("the HTTP judge needs the endpoint's model name (--model on the command line, judge_model "
                             "in notebook 05), e.g. gpt-4o")
        if not re.match(r"^https?://[^/\s]+", str(base_url)):
            raise QuarkError(f"the HTTP judge's base URL must start with http:// or https://, got {base_url!r}")
        if max_tries < 1:
            raise QuarkError(f"max_tries must be >= 1, got {max_tries}")
        self.model, self.base_url, self.api_key_env = model, str(base_url).rstrip("/"), api_key_env or None
        self.max_tries, self.backoff_s, self.max_wait_s = max_tries, backoff_s, max_wait_s
        self.timeout_s, self.max_tokens = timeout_s, max_tokens
        self.id = f"http:{self.base_url}|{model}"
        self.waits: list[float] = []

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env, "")
            if not key.strip():
                raise QuarkError(f"the HTTP judge reads its API key from the environment variable "
                                 f"{self.api_key_env}, which is not set: export it (or name another with "
                                 "--api-key-env)")
            headers["Authorization"] = f"Bearer {key.strip()}"
        return headers

    def judge(self, items):
        return [(raw, parse_answer(raw)) for raw in (self.ask(judge_prompt(*item)) for item in items)]

    def ask(self, text: str) -> str:
        """The content of the endpoint's first choice for one user message."""
        url = f"{self.base_url}/chat/completions"
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                           "messages": [{"role": "user", "content": text}]}).encode()
        last = ""
        for attempt in range(self.max_tries):
            request = urllib.request.Request(url, data=body, headers=self._headers(), method="POST")
            retry_after = None
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return _content(response.read(), url)
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace").strip()
                if exc.code != 429 and exc.code < 500:
                    raise QuarkError(f"the judge endpoint {url} answered {exc.code} {exc.reason}: {detail}"
                                     + (f" (check the key in ${self.api_key_env})" if exc.code in (401, 403)
                                        and self.api_key_env else "")) from None
                last, retry_after = f"{exc.code} {exc.reason}: {detail}", _seconds(exc.headers.get("Retry-After"))
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            if attempt + 1 < self.max_tries:
                wait = retry_after if retry_after is not None else self.backoff_s * 2 ** attempt
                self.waits.append(min(wait, self.max_wait_s))
                time.sleep(self.waits[-1])
        raise QuarkError(f"the judge endpoint {url} failed {self.max_tries} times (rate limit, server or "
                         f"connection errors); the last: {last}. Judgments made so far are cached: run again "
                         "to resume")


def _content(raw: bytes, url: str) -> str:
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise QuarkError(f"the judge endpoint {url} answered 200 without choices[0].message.content "
                         f"({type(exc).__name__}): {raw[:200]!r}; is it OpenAI-compatible?") from None
    return content if isinstance(content, str) else ""


def _seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (a number, or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
        except (TypeError, ValueError):
            return None


def make_judge(kind: str, model: str | None = None, *, base_url: str | None = None,
               api_key_env: str | None = "OPENAI_API_KEY", device: str = "auto", **options):
    """A judge by kind: ``"rm"`` (a reward model, default ``"tiny-tldr"``), ``"lm"`` (a local causal LM,
    default the tiny world's SFT model) or ``"http"`` (an OpenAI-compatible endpoint; ``model`` needed)."""
    from ..paths import locate

    if kind == "rm":
        return RewardJudge(locate(model or "tiny-tldr"), **options)
    if kind == "lm":
        return LMJudge(locate(model or "tiny-tldr"), device=device, **options)
    if kind == "http":
        return HTTPJudge(model, base_url or DEFAULT_BASE_URL, api_key_env=api_key_env, **options)
    raise QuarkError(f"unknown judge {kind!r}: use 'rm' (a reward model), 'lm' (a local causal LM) or 'http' "
                     "(an OpenAI-compatible endpoint)")
