"""Judging two systems pair by pair, in both orders, with a resumable cache; the win rate and its interval.

For each prompt both systems answered, the judge sees the two summaries twice: system A's as "Summary A"
(order ``ab``) and then as "Summary B" (order ``ba``). The pair's outcome for system A:

* ``win`` / ``loss``: both orders prefer A's summary / B's summary;
* ``tie``: both orders say tie, or they disagree (the judge followed the position, not the summary);
* ``malformed``: either answer has no single ``Preferred: A|B`` line; counted, and left out of the rate.

The win rate is the mean over the other pairs of 1 (win), 0.5 (tie) and 0 (loss), with a percentile
bootstrap interval over prompts (seeded, so the same seed gives the same interval).

Judgments go to ``OUT/judge/cache.jsonl`` as they are made, one JSON line each (flushed), keyed by the judge's
id, the prompt and the two summaries in the order shown; a later run with the same judge asks only for what is
missing. The summary and the per-pair records are written atomically beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import QuarkError
from ..files import atomic_write_json, read_jsonl, write_jsonl, write_parquet
from ..metrics import LEVEL, bootstrap_interval
from .judges import VERDICTS
from .systems import System, file_slug, load_system, pair_systems



def _key(judge_id: str, prompt: str, shown_a: str, shown_b: str) -> str:
    return hashlib.sha256(json.dumps([judge_id, prompt, shown_a, shown_b]).encode()).hexdigest()


class JudgmentCache:
    """``judge/cache.jsonl`` of an output folder: one line per judgment, appended and flushed as made.

    A torn last line (an interrupted write) is dropped when the cache is opened; a damaged line elsewhere
    is a QuarkError naming it.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        read = read_jsonl(self.path, "delete that line (its judgment is asked for again) or the whole file")
        keyless = [r for r in read.rows if not isinstance(r.get("key"), str)]
        if keyless:
            raise QuarkError(f"{str(self.path)!r} holds a judgment without a key ({str(keyless[0])[:80]}); delete "
                             "that line (its judgment is asked for again) or the whole file")
        self.entries: dict[str, dict] = {r["key"]: r for r in read.rows}
        if not read.clean_end:  # a torn last line, or one without its newline: the next append must start afresh
            write_jsonl(self.path, read.rows)

    def get(self, judge_id, prompt, shown_a, shown_b) -> dict | None:
        return self.entries.get(_key(judge_id, prompt, shown_a, shown_b))

    def add(self, rows: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for row in rows:
                row = {"key": _key(row["judge"], row["prompt"], row["shown_a"], row["shown_b"]), **row}
                f.write(json.dumps(row) + "\n")
                self.entries[row["key"]] = row
            f.flush()
            os.fsync(f.fileno())


def judge_orders(judge, pairs: pd.DataFrame, cache: JudgmentCache, progress: bool = False) -> pd.DataFrame:
    """Both orders of every pair judged (from the cache where it has them): adds ``raw_ab``, ``verdict_ab``,
    ``raw_ba``, ``verdict_ba``."""
    from ..progress import tqdm

    wanted = [(p, a, b) for p, a, b in zip(pairs["prompt"], pairs["completion_a"], pairs["completion_b"])]
    wanted += [(p, b, a) for p, a, b in wanted]
    todo = list(dict.fromkeys(item for item in wanted if cache.get(judge.id, *item) is None))

    def row(item, raw, verdict):
        p, a, b = item
        return {"judge": judge.id, "prompt": p, "shown_a": a, "shown_b": b, "raw": raw, "verdict": verdict}

    if hasattr(judge, "judge_each"):  # concurrent: each judgment cached as it arrives, in any order
        with tqdm(total=len(todo), desc="judging", disable=not progress or not todo, leave=False) as bar, \
                contextlib.closing(judge.judge_each(todo)) as arriving:
            for i, raw, verdict in arriving:
                cache.add([row(todo[i], raw, verdict)])
                bar.update()
    else:
        step = max(int(getattr(judge, "batch_size", 1) or 1), 1)
        for i in tqdm(range(0, len(todo), step), desc="judging", disable=not progress or not todo, leave=False):
            chunk = todo[i:i + step]
            answers = judge.judge(chunk)
            if len(answers) != len(chunk):
                raise QuarkError(f"judge {judge.id!r} returned {len(answers)} answers for {len(chunk)} pairs")
            cache.add([row(item, raw, verdict) for item, (raw, verdict) in zip(chunk, answers)])
    out = pairs.copy()
    n = len(pairs)
    for order, items in (("ab", wanted[:n]), ("ba", wanted[n:])):
        found = [cache.get(judge.id, *item) for item in items]
        out[f"raw_{order}"] = [r["raw"] for r in found]
        out[f"verdict_{order}"] = [r["verdict"] for r in found]
    return out


def outcomes(records: pd.DataFrame) -> pd.DataFrame:
    """``outcome`` (win/loss/tie/malformed for system A), ``score`` (1/0.5/0, NaN when malformed) and
    ``consistent`` (both orders agree) from ``verdict_ab`` and ``verdict_ba``."""
    unknown = set(records["verdict_ab"]) | set(records["verdict_ba"])
    if unknown - set(VERDICTS):
        raise QuarkError(f"verdicts must be 'A', 'B', 'tie' or 'malformed', got {sorted(unknown)}")
    # in order ab system A's summary is shown as A; in order ba it is shown as B
    first = records["verdict_ab"].map({"A": "a", "B": "b", "tie": "tie", "malformed": None})
    second = records["verdict_ba"].map({"A": "b", "B": "a", "tie": "tie", "malformed": None})
    malformed = first.isna() | second.isna()
    consistent = ~malformed & (first == second)
    outcome = np.where(malformed, "malformed", np.where(~consistent, "tie",
                       first.map({"a": "win", "b": "loss", "tie": "tie"})))
    score = pd.Series(outcome).map({"win": 1.0, "tie": 0.5, "loss": 0.0}).to_numpy()
    return records.assign(outcome=outcome, score=score, consistent=consistent.to_numpy())


def summarize(records: pd.DataFrame, *, seed: int = 0, n_boot: int = 2000) -> dict:
    """Counts, the win rate (ties half, malformed left out) and its bootstrap interval."""
    counts = records["outcome"].value_counts()
    valid = records["score"].dropna().to_numpy()
    low, high = bootstrap_interval(valid, seed=seed, n_boot=n_boot)
    return {"prompts": int(len(records)), "judged": int(len(valid)), "wins": int(counts.get("win", 0)),
            "losses": int(counts.get("loss", 0)), "ties": int(counts.get("tie", 0)),
            "inconsistent": int((~records["consistent"] & (records["outcome"] != "malformed")).sum()),
            "malformed": int(counts.get("malformed", 0)),
            "win_rate": float(valid.mean()) if len(valid) else float("nan"), "ci_low": low, "ci_high": high,
            "level": LEVEL, "bootstrap_seed": int(seed), "n_boot": int(n_boot)}


@dataclass
class WinRate:
    """What :func:`win_rate` measured: ``summary`` (a dict), ``records`` (one row per pair) and the files."""

    summary: dict
    records: pd.DataFrame
    json_path: Path
    records_path: Path

    def __str__(self) -> str:
        s = self.summary
        rate = "n/a (no valid pair)" if s["judged"] == 0 else \
            f"{s['win_rate']:.3f} (95% CI {s['ci_low']:.3f}-{s['ci_high']:.3f})"
        return (f"win rate of {s['system_a']} over {s['system_b']}: {rate} on {s['judged']} of {s['prompts']} "
                f"prompts: {s['wins']} wins, {s['losses']} losses, {s['ties']} ties ({s['inconsistent']} of them "
                f"orders that disagree), {s['malformed']} malformed (left out of the rate); judge {s['judge']}")


def win_rate(a: str | System, b: str | System, judge, *, run_dir: str | os.PathLike | None = None,
             out: str | os.PathLike | None = None, limit: int | None = None, bootstrap_seed: int = 0,
             n_boot: int = 2000, progress: bool = False) -> WinRate:
    """Judge system ``a`` against ``b`` on the prompts they share and write the result under ``OUT/judge/``.

    ``a`` and ``b`` are system specs (:mod:`quarklab.judge.systems`; options alone refer to ``run_dir``)
    or loaded systems; ``judge`` is a judge (:mod:`quarklab.judge.judges`). ``out`` (default: ``run_dir``,
    else ``a``'s run) holds ``judge/cache.jsonl`` and ``judge/<A>_vs_<B>.<judge>.json`` / ``.parquet``.
    """
    from ..paths import resolve_path

    sa, sb = load_system(a, run_dir), load_system(b, run_dir)
    if out is None:
        out = run_dir if run_dir is not None else sa.run
    if out is None:
        raise QuarkError("win_rate needs out=FOLDER (a run directory) for its cache and results")
    folder = resolve_path(out) / "judge"
    pairs = pair_systems(sa, sb, limit)
    records = outcomes(judge_orders(judge, pairs, JudgmentCache(folder / "cache.jsonl"), progress))
    summary = {"system_a": sa.label, "system_b": sb.label, "spec_a": sa.spec, "spec_b": sb.spec,
               "judge": judge.id, **summarize(records, seed=bootstrap_seed, n_boot=n_boot),
               "rule": "ties count half; a pair whose two orders disagree is a tie; malformed answers are "
                       "counted and left out of the rate"}
    name = f"{sa.label}_vs_{sb.label}.{file_slug(judge.id)[:80]}"
    json_path, records_path = folder / f"{name}.json", folder / f"{name}.parquet"
    write_parquet(records_path, records)
    atomic_write_json(json_path, json.loads(pd.Series(summary).to_json()))
    return WinRate(summary, records, json_path, records_path)
