"""Pairwise judge win rates, with real parts: a real local HTTP server speaking the OpenAI chat protocol
(scripted answers), the tiny world's SFT model as a local-LM judge, the tiny-tldr reward as judge, and
run directories whose eval files quarklab itself wrote."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest
import torch

import quarklab as ql
from quarklab import judge as qj
from quarklab.tokens import add_quantile_tokens
from quarklab.files import write_parquet
from quarklab.runs import eval_path
from quarklab.sampling import SamplingParams

KEY = "sk-test-do-not-write-7f3a9c"


# ------------------------------------------------------------------ a real OpenAI-compatible server on 127.0.0.1

class Scripted(ThreadingHTTPServer):
    """Answers /chat/completions like a judge that prefers the summary holding GOOD. A post holding MALFORMED
    gets an answer without a Preferred line; one holding POSITION always gets "A"; one holding DOOMED always gets
    a 500. ``failures`` are sent first, one per request (status 0: the connection is closed with no answer);
    ``fail_after`` makes every request past that many successes a 503. ``delay(text)`` is how long a request waits
    before its answer; ``echo`` quotes summary A in the answer. ``in_flight`` and ``most_in_flight`` count the
    requests being answered at once."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.hits: list[dict] = []
        self.failures: list[tuple[int, dict]] = []
        self.fail_after: int | None = None
        self.answered = 0
        self.delay = lambda text: 0.0
        self.echo = False
        self.lock = threading.Lock()
        self.in_flight = self.most_in_flight = 0
        self.finished: list[str] = []  # summary A of each request answered 200, in the order the answers went out

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        server: Scripted = self.server
        with server.lock:
            server.in_flight += 1
            server.most_in_flight = max(server.most_in_flight, server.in_flight)
        self.counted = True
        try:
            self._answer(server)
        finally:
            self._done(server)

    def _done(self, server: Scripted):
        """The request leaves the count before its answer goes out: the client may send the next at once."""
        if self.counted:
            self.counted = False
            with server.lock:
                server.in_flight -= 1

    def _answer(self, server: Scripted):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.hits.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            failure = server.failures.pop(0) if server.failures else None
        if failure == (0, {}):
            self.close_connection = True  # no status line at all: the client sees the connection dropped
            return
        if failure:
            status, headers = failure
            return self._send(status, {"error": {"message": f"scripted {status}"}}, headers)
        text = body["messages"][0]["content"]
        post = text.split("Post:\n", 1)[1].split("\n\nSummary A:", 1)[0]
        shown_a = text.split("Summary A:\n", 1)[1].split("\n\nSummary B:", 1)[0]
        if "DOOMED" in post:
            return self._send(500, {"error": {"message": "scripted: this one always fails"}})
        time.sleep(server.delay(text))
        with server.lock:
            outage = server.fail_after is not None and server.answered >= server.fail_after
            if not outage:
                server.answered += 1
                server.finished.append(shown_a)
        if outage:
            return self._send(503, {"error": {"message": "scripted outage"}})
        if "MALFORMED" in post:
            answer = "Comparison: both are fine.\nI cannot choose."
        elif "POSITION" in post:
            answer = "Comparison: the first one reads better.\nPreferred: A"
        elif server.echo:
            answer = f"Comparison: A is {shown_a}.\nPreferred: {'A' if 'GOOD' in shown_a else 'B'}"
        else:
            answer = f"Comparison: one names the point.\nPreferred: {'A' if 'GOOD' in shown_a else 'B'}"
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": answer}}]})

    def _send(self, status, payload, headers=None):
        self._done(self.server)
        data = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    srv = Scripted()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _prompt(title: str, body: str) -> str:
    return ql.tldr.format_prompt("test", title, body)


# five prompts: two wins for A, one loss, one malformed, one where the judge only follows the position
CASES = [("win one", "GOOD summary one", "weak summary one"), ("loss", "weak summary two", "GOOD summary two"),
         ("MALFORMED answer", "GOOD summary three", "weak summary three"),
         ("POSITION bias", "GOOD summary four", "weak summary four"), ("win two", "GOOD summary five", "weak five")]


@pytest.fixture
def scripted_files(tmp_path):
    a = pd.DataFrame({"prompt": [_prompt(t, f"post about {t}") for t, _, _ in CASES], "completion": [c[1] for c in CASES]})
    b = pd.DataFrame({"prompt": a["prompt"], "completion": [c[2] for c in CASES]})
    a.to_json(tmp_path / "a.jsonl", orient="records", lines=True)
    b.to_csv(tmp_path / "b.csv", index=False)
    return f"file:{tmp_path / 'a.jsonl'}", f"file:{tmp_path / 'b.csv'}"


def _http(server, **kw):
    return qj.HTTPJudge("scripted-judge", server.base_url, api_key_env="QL_TEST_KEY", backoff_s=0.01, **kw)


def test_http_judge_counts_wins_losses_inconsistent_ties_and_malformed(server, scripted_files, tmp_path, monkeypatch):
    monkeypatch.setenv("QL_TEST_KEY", KEY)
    a, b = scripted_files
    result = qj.win_rate(a, b, _http(server), out=tmp_path / "run")
    s = result.summary
    assert (s["wins"], s["losses"], s["ties"], s["inconsistent"], s["malformed"]) == (2, 1, 1, 1, 1)
    assert s["judged"] == 4 and s["prompts"] == 5 and s["win_rate"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert s["ci_low"] <= s["win_rate"] <= s["ci_high"]
    assert len(server.hits) == 10  # every pair in both orders
    assert {h["path"] for h in server.hits} == {"/v1/chat/completions"}
    assert all(h["body"]["temperature"] == 0 and h["body"]["model"] == "scripted-judge" for h in server.hits)
    first = server.hits[0]["body"]["messages"][0]["content"]
    assert first.startswith("Which of the following summaries does a better job") and "TL;DR" not in first
    assert first.endswith('Comparison: <one-sentence comparison and explanation>\nPreferred: <"A" or "B">')
    r = result.records.set_index(result.records["prompt"].map(ql.tldr.title_of))
    assert r.loc["MALFORMED answer", "outcome"] == "malformed" and np.isnan(r.loc["MALFORMED answer", "score"])
    assert "I cannot choose" in r.loc["MALFORMED answer", "raw_ab"]
    assert r.loc["POSITION bias", ["verdict_ab", "verdict_ba", "outcome"]].tolist() == ["A", "A", "tie"]
    assert not r.loc["POSITION bias", "consistent"] and r.loc["loss", "outcome"] == "loss"
    saved = json.loads(result.json_path.read_text())
    assert saved["malformed"] == 1 and saved["judge"] == f"http:{server.base_url}|scripted-judge"
    assert pd.read_parquet(result.records_path)["outcome"].tolist() == result.records["outcome"].tolist()
    # the key went in the Authorization header, and nowhere else
    assert {h["auth"] for h in server.hits} == {f"Bearer {KEY}"}
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert len(written) == 3 and not [p for p in written if KEY.encode() in p.read_bytes()]
    assert KEY not in str(result) and KEY not in qj.HTTPJudge("m", server.base_url, api_key_env="QL_TEST_KEY").id


def test_the_cache_answers_a_second_run_and_an_interrupted_run_resumes(server, scripted_files, tmp_path, monkeypatch):
    monkeypatch.setenv("QL_TEST_KEY", KEY)
    a, b = scripted_files
    server.fail_after = 3  # the endpoint goes down after three answers
    with pytest.raises(ql.QuarkError, match=r"failed 2 times .* the last: 503.*cached: run again to resume"):
        qj.win_rate(a, b, _http(server, max_tries=2), out=tmp_path / "run")
    cache = tmp_path / "run" / "judge" / "cache.jsonl"
    assert len(cache.read_text().splitlines()) == 3
    server.fail_after, before = None, server.answered
    first = qj.win_rate(a, b, _http(server), out=tmp_path / "run")
    assert server.answered - before == 10 - 3  # only the missing judgments were asked for
    hits = len(server.hits)
    again = qj.win_rate(a, b, _http(server), out=tmp_path / "run")
    assert len(server.hits) == hits  # a second run asks for nothing
    assert again.summary == first.summary and len(cache.read_text().splitlines()) == 10
    with open(cache, "a") as f:  # a write torn by a kill: dropped on the next open, and that line re-asked
        f.write('{"key": "abc", "judge": "http:')
    assert len(qj.JudgmentCache(cache).entries) == 10 and cache.read_text().endswith("}\n")
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:4] + ["not json"] + lines[4:]) + "\n")
    with pytest.raises(ql.QuarkError, match=r"cache.jsonl' line 5 is damaged"):
        qj.JudgmentCache(cache)


def test_http_retries_429_and_500_then_fails_clearly(server, monkeypatch):
    monkeypatch.setenv("QL_TEST_KEY", KEY)
    item = [(_prompt("win one", "post"), "GOOD a", "b")]
    judge = _http(server)
    server.failures = [(429, {"Retry-After": "0.05"})]
    assert judge.judge(item) == [("Comparison: one names the point.\nPreferred: A", "A")]
    assert len(server.hits) == 2 and judge.waits == [0.05]  # Retry-After honoured
    server.failures = [(500, {}), (502, {})]
    assert judge.judge(item)[0][1] == "A" and len(server.hits) == 5 and judge.waits[1:] == [0.01, 0.02]
    server.failures = [(503, {})] * 5
    with pytest.raises(ql.QuarkError, match=r"failed 3 times .*503"):
        _http(server, max_tries=3).judge(item)
    assert len(server.hits) == 8
    with socket.socket() as sock:  # a port nothing listens on: connection errors are retried too
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gone = qj.HTTPJudge("m", f"http://127.0.0.1:{port}/v1", api_key_env=None, max_tries=2, backoff_s=0.01)
    with pytest.raises(ql.QuarkError, match=r"endpoint http://127.0.0.1:\d+/v1/chat/completions failed 2 times "
                                             r".*Connection refused"):
        gone.judge(item)
    assert gone.waits == []  # httpx's transport retried the connection, with its own backoff
    judge, before = _http(server), len(server.hits)
    server.failures = [(0, {})]  # a connection dropped before any answer is retried here, like a 5xx
    assert judge.judge(item)[0][1] == "A" and len(server.hits) == before + 2 and judge.waits == [0.01]


def _items(n: int) -> list[tuple[str, str, str]]:
    """``n`` judge items, summary A holding GOOD in every other one, each summary A its own."""
    return [(_prompt(f"post {k}", f"body {k}"), f"{'GOOD' if k % 2 == 0 else 'weak'} summary {k}", f"other {k}")
            for k in range(n)]


def test_http_judge_keeps_at_most_n_requests_in_flight_and_returns_results_in_input_order(server, monkeypatch):
    monkeypatch.setenv("QL_TEST_KEY", KEY)
    server.echo = True
    server.delay = lambda text: 0.05 + 0.03 * (int(re.search(r"summary (\d+)", text).group(1)) * 7 % 5)
    items = _items(14)
    judge = _http(server, concurrency=3)
    results = judge.judge(items)
    assert len(server.hits) == 14 and server.most_in_flight == 3  # concurrent, and never more than 3 at once
    assert server.finished != [a for _, a, _ in items]  # the answers came back in another order ...
    firsts = [raw.splitlines()[0] for raw, _ in results]
    assert firsts == [f"Comparison: A is {a}." for _, a, _ in items]  # ... the results did not
    assert [verdict for _, verdict in results] == ["A" if k % 2 == 0 else "B" for k in range(14)]
    assert judge.judge([]) == [] and len(server.hits) == 14
    with pytest.raises(ql.QuarkError, match=r"concurrency \(requests in flight at once\) must be an integer >= 1, "
                                            r"got 0"):
        _http(server, concurrency=0)


def test_a_concurrent_win_rate_asks_only_for_what_is_not_cached(server, scripted_files, tmp_path, monkeypatch):
    monkeypatch.setenv("QL_TEST_KEY", KEY)
    server.delay = lambda text: 0.2 if "win one" in text else 0.05  # the first pair answers last
    a, b = scripted_files
    first = qj.win_rate(a, b, _http(server, concurrency=4), out=tmp_path / "run", limit=2)
    assert len(server.hits) == 4 and server.most_in_flight == 4  # 2 prompts x 2 orders, all at once
    cache = tmp_path / "run" / "judge" / "cache.jsonl"
    assert len(cache.read_text().splitlines()) == 4
    full = qj.win_rate(a, b, _http(server, concurrency=4), out=tmp_path / "run")
    assert len(server.hits) == 4 + 6  # only the 3 new prompts' 6 (pair, order) items were asked for
    assert first.records["outcome"].tolist() == ["win", "loss"]
    assert full.records["outcome"].tolist() == ["win", "loss", "malformed", "tie", "win"]  # in the prompts' order
    again = qj.win_rate(a, b, _http(server, concurrency=4), out=tmp_path / "run")
    assert len(server.hits) == 10 and again.summary == full.summary  # the cache answered everything


def test_a_persistent_failure_stops_new_requests_names_the_endpoint_and_keeps_what_was_judged(server, tmp_path,
                                                                                               monkeypatch):
    monkeypatch.setenv("QL_TEST_KEY", KEY)
    server.delay = lambda text: 0.3  # the answers in flight arrive after the failure
    items = _items(12)
    items[1] = (_prompt("DOOMED post", "body"), "GOOD doomed", "other")
    pairs = pd.DataFrame({"prompt": [p for p, _, _ in items], "completion_a": [a for _, a, _ in items],
                          "completion_b": [b for _, _, b in items]})
    cache = qj.JudgmentCache(tmp_path / "judge" / "cache.jsonl")
    judge = _http(server, concurrency=4, max_tries=2)
    with pytest.raises(ql.QuarkError, match=rf"the judge endpoint {re.escape(server.base_url)}/chat/completions "
                                            r"failed 2 times .*500 .*this one always fails.*cached: run again"):
        qj.judge_orders(judge, pairs, cache)
    doomed = [h for h in server.hits if "DOOMED" in h["body"]["messages"][0]["content"]]
    assert len(doomed) == 2  # tried twice, in one order only: nothing new started after it failed
    assert len(server.hits) < 2 * 12  # most of the 24 (pair, order) items were never asked for
    kept = qj.JudgmentCache(tmp_path / "judge" / "cache.jsonl").entries
    assert len(kept) == server.answered >= 3  # every answer that arrived is cached, those in flight at the end too
    assert {r["shown_a"] for r in kept.values()} >= {a for _, a, _ in items[:4] if "doomed" not in a}
    server.delay, before = (lambda text: 0.0), len(server.hits)
    rest = pairs[~pairs["prompt"].str.contains("DOOMED")]  # resumed without the pair that cannot be judged
    records = qj.judge_orders(judge, rest, qj.JudgmentCache(tmp_path / "judge" / "cache.jsonl"))
    assert len(server.hits) - before == 2 * 11 - len(kept)  # only what the cache lacked was asked for
    assert records["verdict_ab"].tolist() == ["A" if k % 2 == 0 else "B" for k in range(12) if k != 1]


def test_the_http_judge_goes_through_the_environments_proxy(server, monkeypatch):
    """HTTP_PROXY is honoured (as urllib did): the request for the endpoint's host reaches the proxy, which here
    answers it itself; NO_PROXY for that host sends it direct."""
    monkeypatch.setenv("QL_TEST_KEY", KEY)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    judge = qj.HTTPJudge("m", "http://judge.invalid/v1", api_key_env="QL_TEST_KEY", max_tries=1)
    assert judge.judge(_items(1))[0][1] == "A"
    assert server.hits[0]["path"] == "http://judge.invalid/v1/chat/completions"  # a proxy's request line
    monkeypatch.setenv("NO_PROXY", "judge.invalid")
    with pytest.raises(ql.QuarkError, match="failed 1 times .*ConnectError"):
        judge.judge(_items(1))
    assert len(server.hits) == 1


def test_http_401_fails_at_once_and_names_the_variable_not_the_key(server, monkeypatch):
    monkeypatch.setenv("QL_TEST_KEY", KEY)
    server.failures = [(401, {})]
    with pytest.raises(ql.QuarkError, match=r"answered 401 .*check the key in \$QL_TEST_KEY") as info:
        _http(server).judge([(_prompt("t", "p"), "a", "b")])
    assert len(server.hits) == 1 and KEY not in str(info.value)
    monkeypatch.delenv("QL_TEST_KEY")
    with pytest.raises(ql.QuarkError, match=r"environment variable QL_TEST_KEY, which is not set"):
        _http(server).judge([(_prompt("t", "p"), "a", "b")])
    assert len(server.hits) == 1


def test_answers_are_parsed_strictly():
    assert qj.parse_answer("Comparison: A is shorter.\nPreferred: A") == "A"
    assert qj.parse_answer('Comparison: x\nPreferred: "B"') == "B"
    for bad in ("A", "Preferred: A or B", "Preferred: C", "Comparison: x\nPreferred: A\nPreferred: B", "",
                "I prefer A"):
        assert qj.parse_answer(bad) == "malformed", bad
    assert qj.post_of("SUBREDDIT: r/x\nTITLE: t\nPOST: body\nTL;DR:") == "SUBREDDIT: r/x\nTITLE: t\nPOST: body"


# ------------------------------------------------------------------ local judges on the tiny world

def test_local_lm_judge_compares_the_log_probs_of_its_two_answers(world, sft):
    model, tokenizer = sft
    judge = qj.LMJudge(world.policy, device="cpu")
    assert judge.id == f"lm:{world.policy}"
    prompts = ql.load_prompts("tiny-tldr", "test", limit=2)["prompt"].tolist()
    items = [(prompts[0], " my manager texts me at night.", " I like cats."), (prompts[1], " no.", " a b c")]
    answers = judge.judge(items)
    for item, (raw, verdict) in zip(items, answers):
        ids = tokenizer(qj.judge_prompt(*item) + "\nPreferred:", add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
        a, b = (logp[tokenizer(f" {k}", add_special_tokens=False)["input_ids"][0]].item() for k in "AB")
        got = [float(x) for x in re.findall(r"= (-?[\d.]+(?:e-?\d+)?)", raw)]
        assert got == pytest.approx([a, b], abs=1e-3)
        assert verdict == ("A" if a > b else "B")


def test_reward_judge_prefers_real_summaries_and_ties_a_system_with_itself(world, tmp_path):
    rows = ql.load_prompts("tiny-tldr", "test", limit=40)
    real = rows.assign(completion=" " + rows["label"])
    other = rows.assign(completion=np.roll(real["completion"].to_numpy(), 1))  # another post's summary
    real.to_parquet(tmp_path / "real.parquet")
    other.to_json(tmp_path / "other.jsonl", orient="records", lines=True)
    judge = qj.make_judge("rm")
    result = qj.win_rate(f"file:{tmp_path / 'real.parquet'}", f"file:{tmp_path / 'other.jsonl'}", judge, out=tmp_path)
    s = result.summary
    assert s["prompts"] == 40 and s["malformed"] == 0 and s["inconsistent"] == 0
    assert s["win_rate"] > 0.85 and s["ci_low"] > 0.7
    same = qj.win_rate(f"file:{tmp_path / 'real.parquet'}", f"file:{tmp_path / 'real.parquet'}", judge, out=tmp_path,
                       limit=10).summary
    assert (same["win_rate"], same["ci_low"], same["ci_high"], same["ties"], same["prompts"]) == (0.5, 0.5, 0.5, 10, 10)


def test_bootstrap_interval_holds_the_estimate_narrows_with_more_pairs_and_is_seeded():
    rng = np.random.default_rng(7)
    small, large = (rng.choice([0.0, 0.5, 1.0], size=n, p=[0.3, 0.2, 0.5]) for n in (20, 500))
    lo_s, hi_s = qj.bootstrap_interval(small, seed=1)
    lo_l, hi_l = qj.bootstrap_interval(large, seed=1)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 2
    assert qj.bootstrap_interval(small, seed=1) == (lo_s, hi_s) and qj.bootstrap_interval(small, seed=2) != (lo_s, hi_s)
    assert np.isnan(qj.bootstrap_interval([], seed=0)[0])
    with pytest.raises(ql.QuarkError, match="finite"):
        qj.bootstrap_interval([0.5, np.nan])


# ------------------------------------------------------------------ run directories, specs and the CLI

@pytest.fixture(scope="module")
def run_dir(world, tmp_path_factory):
    """A run directory with eval/iter_000 (the SFT reference) and eval/iter_001 (tokens 0, 1 and none), written
    the way quarklab's loop writes them, by quarklab's own evaluate()."""
    run = tmp_path_factory.mktemp("judge") / "run"
    prompts, reward = ql.load_prompts("tiny-tldr", "test", limit=4), ql.load_reward("tiny-tldr")
    params = SamplingParams(do_sample=False, max_new_tokens=12)
    policy, tokenizer = ql.load_policy(world.policy), ql.load_tokenizer(world.policy)
    _, ref = ql.evaluate(policy, tokenizer, prompts, reward, tokens=[None], params=params)
    write_parquet(eval_path(run, 0), ref.assign(mode="greedy"))
    ids = add_quantile_tokens(policy, tokenizer, 2)
    _, it1 = ql.evaluate(policy, tokenizer, prompts, reward, control_ids=ids, params=params)
    write_parquet(eval_path(run, 1), it1.assign(mode="greedy"))
    return run


def test_system_specs_pick_the_rows_a_researcher_means(run_dir):
    ev = pd.read_parquet(eval_path(run_dir, 1))
    token1 = qj.load_system(f"{run_dir}:token=1")
    assert token1.table["completion"].tolist() == ev[ev["token"] == 1]["completion"].tolist()
    assert token1.label == "run-it1-token1"
    spaced = qj.load_system("token 1, iteration last", run_dir)  # the form a notebook parameter takes
    assert spaced.table.equals(token1.table) and spaced.label == token1.label
    assert qj.load_system(str(run_dir)).table["completion"].tolist() == ev[ev["token"] == 0]["completion"].tolist()
    ref = pd.read_parquet(eval_path(run_dir, 0))["completion"].tolist()
    for spec in ("reference", "iteration=0"):
        assert qj.load_system(spec, run_dir).table["completion"].tolist() == ref
    bare = qj.load_system(f"{run_dir}:token=none,iteration=last")
    assert bare.table["completion"].tolist() == ev[ev["token"].isna()]["completion"].tolist()
    for spec, message in [("token=one", r"token must be none or an integer >= 0, got 'one'"),
                          ("tokn=0", r"'tokn=0' is not an option"), ("mode=beam", r"mode must be 'greedy' or 'sampled'"),
                          ("token=5", r"no samples for token 5; it has tokens 0, 1, none"),
                          ("iteration=3", r"iteration 3 was not evaluated; the run has \[0, 1\]"),
                          ("token=0,iteration=0", r"iteration 0 is the reference: token=none"),
                          ("mode=sampled", r"has no sampled evaluation samples")]:
        with pytest.raises(ql.QuarkError, match=message):
            qj.load_system(spec, run_dir)
    with pytest.raises(ql.QuarkError, match=r"names options but no run directory"):
        qj.load_system("token=0")
    with pytest.raises(ql.QuarkError, match=r"run directory '.*nowhere' does not exist"):
        qj.load_system(f"{run_dir}/nowhere:token=0")
    with pytest.raises(ql.QuarkError, match=r"must end in .jsonl"):
        qj.load_system(f"file:{run_dir}/eval")


def test_systems_sharing_no_prompt_are_refused_and_limit_cuts(run_dir, tmp_path):
    pd.DataFrame({"prompt": ["SUBREDDIT: r/x\nTITLE: t\nPOST: unrelated\nTL;DR:"], "completion": [" x"]}).to_csv(
        tmp_path / "other.csv", index=False)
    with pytest.raises(ql.QuarkError, match=r"\(4 prompts\) and .*other.csv' \(1 prompts\) share no prompt"):
        qj.win_rate(f"{run_dir}:token=0", f"file:{tmp_path / 'other.csv'}", qj.make_judge("rm"))
    pd.DataFrame({"prompt": ["p"], "answer": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ql.QuarkError, match=r"has no 'completion' column"):
        qj.load_system(f"file:{tmp_path / 'bad.csv'}")
    pairs = qj.pair_systems(qj.load_system("token=0", run_dir), qj.load_system("reference", run_dir), limit=3)
    assert len(pairs) == 3 and pairs["prompt_id"].tolist() == [0, 1, 2]
    with pytest.raises(ql.QuarkError, match="limit must be"):
        qj.pair_systems(qj.load_system("token=0", run_dir), qj.load_system("reference", run_dir), limit=0)


def test_cli_judges_a_run_and_reports_bad_input_in_one_line(run_dir):
    cli = [sys.executable, "-m", "quarklab.cli", "judge"]
    proc = subprocess.run(cli + ["--a", f"{run_dir}:token=0", "--b", f"{run_dir}:reference", "--judge", "rm"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("win rate of run-it1-token0 over run-reference: ")
    assert re.search(r"\(95% CI [\d.]+-[\d.]+\) on 4 of 4 prompts", proc.stdout)
    saved = json.loads((run_dir / "judge" / "run-it1-token0_vs_run-reference.rm_tiny-tldr.json").read_text())
    assert saved["wins"] + saved["losses"] + saved["ties"] + saved["malformed"] == 4 == saved["prompts"]
    assert saved["spec_b"] == f"{run_dir}:reference" and saved["judge"] == "rm:tiny-tldr"
    for args, message in [(["--a", f"{run_dir}:token=x", "--b", str(run_dir)], "token must be none or an integer"),
                          (["--a", str(run_dir), "--b", str(run_dir), "--judge", "http"], "--judge http needs --model"),
                          (["--a", str(run_dir), "--b", str(run_dir), "--judge", "http", "--model", "m",
                            "--concurrency", "0"], "concurrency (requests in flight at once) must be an integer >= 1")]:
        proc = subprocess.run(cli + args, capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.startswith("quarklab: error: ") and message in proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_reward_judge_can_be_a_python_file_function(tmp_path, monkeypatch):
    """quarklab judge --judge rm --model rewards.py:score: the function judges (shorter wins under minus length),
    its relative path read from the project root as every judge model is."""
    from quarklab.judge import make_judge
    from tables import project_folder

    root = project_folder(tmp_path)
    (root / "rewards.py").write_text("def score(prompts, completions):\n    return [-len(c) for c in completions]\n")
    monkeypatch.chdir(root / "notebooks")
    judge = make_judge("rm", "rewards.py:score")
    assert judge.id == f"rm:{root.resolve() / 'rewards.py'}:score"
    assert [v for _, v in judge.judge([("p", "short", "longer one"), ("p", "longer one", "short"),
                                       ("p", "ab", "cd")])] == ["A", "B", "tie"]
