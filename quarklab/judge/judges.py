"""Three judges behind one small interface; each task's judging prompt (:mod:`quarklab.tasks`: TL;DR's, and the
continuation task's in the same strict answer format).

A judge has an ``id`` (what it is: kind and model, and for HTTP the base URL; never a key), a
``batch_size`` (how many judgments it makes per call; the cache is written after each call) and
``judge(items) -> list[(raw, verdict)]``: for each ``(prompt, summary_a, summary_b)``, in that one order,
its raw answer text and its verdict, ``"A"``, ``"B"``, ``"tie"`` or ``"malformed"``. A judge that makes its
judgments concurrently (the HTTP judge) also has ``judge_each(items)``, yielding ``(index, raw, verdict)`` as each
arrives, in any order; the win rate then caches each judgment as it arrives.
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import threading
import time

import numpy as np

from ..errors import QuarkError
from ..tasks import get_task

VERDICTS = ("A", "B", "tie", "malformed")
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_CONCURRENCY = 8  # requests an HTTP judge keeps in flight at once
_PREFERRED = re.compile(r"^\s*Preferred:\s*\"?([AB])\"?\s*\.?\s*$")


def judge_prompt(prompt: str, a: str, b: str, task: str = "tldr") -> str:
    """The judging prompt of ``task`` (:mod:`quarklab.tasks`) for ``prompt`` and the two texts shown as A and B."""
    return get_task(task).judge_prompt(prompt, a, b)


def task_suffix(task) -> str:
    """What a judge's id adds for its task: nothing for TL;DR (the ids of judgments cached before tasks), else
    ``"|task=<name>"``, so a judgment under one task's prompt is never read back for another's."""
    return "" if task.name == "tldr" else f"|task={task.name}"


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

    def __init__(self, model="tiny-tldr", *, device="auto", batch_size: int = 8, task: str = "tldr"):
        from ..hub import resolve_model
        from ..models import load_policy, load_tokenizer

        source = resolve_model(model)
        self.task = get_task(task)
        self.model, self.tokenizer = load_policy(source, device=device), load_tokenizer(source)
        self.id, self.batch_size = f"lm:{os.fspath(source)}{task_suffix(self.task)}", batch_size
        self.answers = {k: self.tokenizer(f" {k}", add_special_tokens=False)["input_ids"] for k in ("A", "B")}

    def judge(self, items):
        from ..models import context_length
        from ..scoring import completion_nll

        room = context_length(self.model, self.tokenizer) - max(map(len, self.answers.values()))
        prompts = [self.tokenizer(self.task.judge_prompt(*item) + "\nPreferred:", add_special_tokens=False)["input_ids"]
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
    """Any OpenAI-compatible chat endpoint: POST ``{base_url}/chat/completions`` at temperature 0, through
    ``httpx``, with up to ``concurrency`` requests in flight at once.

    :meth:`judge_each` yields each judgment as its answer arrives (the win rate caches it then, so a killed run
    resumes); :meth:`judge` returns them in the input order whatever order they finished in. Requests run on
    threads, not an event loop, so a notebook (which has its own loop) can call them too.

    The API key is read from the environment variable named ``api_key_env`` at each request and sent
    only in the ``Authorization`` header: it is in no id, record, cache line, file or message.
    ``api_key_env=None`` sends no key (a local server). A connection that cannot be made is retried by httpx's
    transport (``max_tries`` attempts in all, its own short backoff); rate limits (429), server errors (5xx),
    read timeouts and dropped connections are retried up to ``max_tries`` times, waiting ``backoff_s * 2**n``
    (at most ``max_wait_s``) or what ``Retry-After`` asks, and a 429 holds back every request of the judge for
    that long; another 4xx fails at once. ``waits`` lists the seconds waited before each retry. The
    environment's HTTP(S)_PROXY and NO_PROXY apply, as for urllib.
    """

    batch_size = 1

    def __init__(self, model: str, base_url: str = DEFAULT_BASE_URL, *,
                 api_key_env: str | None = "OPENAI_API_KEY", concurrency: int = DEFAULT_CONCURRENCY,
                 max_tries: int = 6, backoff_s: float = 1.0, max_wait_s: float = 120.0, timeout_s: float = 120.0,
                 max_tokens: int = 256, task: str = "tldr"):
        if not model or not isinstance(model, str):
            raise QuarkError("the HTTP judge needs the endpoint's model name (--model on the command line, judge_model "
                             "in notebook 05), e.g. gpt-4o")
        if not re.match(r"^https?://[^/\s]+", str(base_url)):
            raise QuarkError(f"the HTTP judge's base URL must start with http:// or https://, got {base_url!r}")
        if max_tries < 1:
            raise QuarkError(f"max_tries must be >= 1, got {max_tries}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise QuarkError(f"the HTTP judge's concurrency (requests in flight at once) must be an integer >= 1, "
                             f"got {concurrency!r}")
        self.model, self.base_url, self.api_key_env = model, str(base_url).rstrip("/"), api_key_env or None
        self.concurrency, self.max_tries = concurrency, max_tries
        self.backoff_s, self.max_wait_s = backoff_s, max_wait_s
        self.timeout_s, self.max_tokens = timeout_s, max_tokens
        self.url = f"{self.base_url}/chat/completions"
        self.task = get_task(task)
        self.id = f"http:{self.base_url}|{model}{task_suffix(self.task)}"
        self.waits: list[float] = []
        self._hold = threading.Lock()
        self._resume_at = 0.0  # time.monotonic() before which no request starts (a 429's Retry-After)

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

    def _client(self):
        """An httpx client with ``concurrency`` connections, retrying connections ``max_tries - 1`` times, through
        the environment's proxy for this URL (what urllib would use; an explicit transport turns off httpx's own
        reading of the environment)."""
        import urllib.parse
        import urllib.request

        import httpx

        parts = urllib.parse.urlsplit(self.url)
        bypass = urllib.request.proxy_bypass(parts.hostname or "")
        proxy = None if bypass else urllib.request.getproxies().get(parts.scheme)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        transport = httpx.HTTPTransport(retries=self.max_tries - 1, limits=limits, proxy=proxy)
        return httpx.Client(transport=transport, timeout=self.timeout_s)

    def judge(self, items):
        """``(raw, verdict)`` for each item, in the order of ``items``."""
        out = [None] * len(items)
        for i, raw, verdict in self.judge_each(items):
            out[i] = (raw, verdict)
        return out

    def judge_each(self, items):
        """Yield ``(index, raw, verdict)`` for each item of ``items`` as its answer arrives, at most ``concurrency``
        requests in flight. After a failure (retries spent, or an answer that is not retried) no new request
        starts; those in flight are awaited and yielded, then the failure is raised (one QuarkError)."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        items = list(items)
        if not items:
            return
        self._headers()  # a missing key fails before any request
        failure, finished = None, False
        with self._client() as client:
            pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(items)), thread_name_prefix="http-judge")
            try:
                pending = {pool.submit(self.ask, self.task.judge_prompt(*item), client): i
                           for i, item in enumerate(items)}
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        i = pending.pop(future)
                        if future.cancelled():
                            continue
                        if future.exception() is not None:
                            if failure is None:
                                failure = future.exception()
                                for rest in pending:  # start nothing new; what is in flight still finishes
                                    rest.cancel()
                            continue
                        raw = future.result()
                        yield i, raw, parse_answer(raw)
                finished = True
            finally:  # normally all is done; a consumer that stops early (Ctrl-C) leaves at once
                pool.shutdown(wait=finished, cancel_futures=True)
        if failure is not None:
            raise failure

    def ask(self, text: str, client=None) -> str:
        """The content of the endpoint's first choice for one user message (``client``: an httpx client to share;
        None: one for this request)."""
        if client is None:
            with self._client() as own:
                return self.ask(text, own)
        import httpx

        url = self.url
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                           "messages": [{"role": "user", "content": text}]}).encode()
        last = ""
        for attempt in range(self.max_tries):
            self._wait_for_hold()
            retry_after = None
            try:
                response = client.post(url, content=body, headers=self._headers())
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # the transport has retried these already
                last = f"{type(exc).__name__}: {exc}"
                break
            except httpx.TransportError as exc:  # a read timeout, a dropped connection: retried here
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    return _content(response.content, url)
                code, reason = response.status_code, response.reason_phrase
                detail = response.content[:300].decode("utf-8", "replace").strip()
                if code != 429 and code < 500:
                    raise QuarkError(f"the judge endpoint {url} answered {code} {reason}: {detail}"
                                     + (f" (check the key in ${self.api_key_env})" if code in (401, 403)
                                        and self.api_key_env else ""))
                last, retry_after = f"{code} {reason}: {detail}", _seconds(response.headers.get("Retry-After"))
            if attempt + 1 < self.max_tries:
                wait = min(retry_after if retry_after is not None else self.backoff_s * 2 ** attempt, self.max_wait_s)
                self.waits.append(wait)
                if retry_after is not None:  # the endpoint asked for a pause: every request of this judge takes it
                    with self._hold:
                        self._resume_at = max(self._resume_at, time.monotonic() + wait)
                time.sleep(wait)
        raise QuarkError(f"the judge endpoint {url} failed {self.max_tries} times (rate limit, server or "
                         f"connection errors); the last: {last}. Judgments made so far are cached: run again "
                         "to resume")

    def _wait_for_hold(self) -> None:
        with self._hold:
            pause = self._resume_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)


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
               api_key_env: str | None = "OPENAI_API_KEY", device: str = "auto", concurrency: int | None = None,
               task: str = "tldr", **options):
    """A judge by kind: ``"rm"`` (a reward model, default ``"tiny-tldr"``), ``"lm"`` (a local causal LM,
    default the tiny world's SFT model) or ``"http"`` (an OpenAI-compatible endpoint; ``model`` needed).
    ``concurrency``: the HTTP judge's requests in flight at once (None: :data:`DEFAULT_CONCURRENCY`); the local
    judges batch instead and ignore it. ``task`` (:mod:`quarklab.tasks`): the judging prompt of the "lm" and
    "http" judges (the "rm" judge reads its reward, not a prompt)."""
    from ..paths import locate

    if kind == "rm":
        return RewardJudge(locate(model or "tiny-tldr"), **options)
    if kind == "lm":
        return LMJudge(locate(model or "tiny-tldr"), device=device, task=task, **options)
    if kind == "http":
        if concurrency is not None:
            options["concurrency"] = concurrency
        return HTTPJudge(model, base_url or DEFAULT_BASE_URL, api_key_env=api_key_env, task=task, **options)
    raise QuarkError(f"unknown judge {kind!r}: use 'rm' (a reward model), 'lm' (a local causal LM) or 'http' "
                     "(an OpenAI-compatible endpoint)")
