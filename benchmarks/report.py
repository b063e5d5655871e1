"""The report: targets judged from its ratios, strict JSON, and the table ``quarklab bench`` prints."""

from __future__ import annotations

import math

import numpy as np

from .residency import format_residency
from .settings import TARGETS


def targets(report: dict) -> dict:
    values = {**report["ratios"], "bench_wall_seconds": report.get("process_seconds") or report["wall_seconds"]}
    s = report["settings"]
    default_cpu = not s["quick"] and s["config"]["device"] == "cpu" and s["model"] is None
    out = {}
    for name, (op, threshold, what) in TARGETS.items():
        value = values.get(name)
        entry = {"value": value, "op": op, "target": threshold, "what": what}
        if name == "bench_wall_seconds" and not default_cpu:
            entry.update({"pass": None, "note": "applies to the full default bench on CPU only"})
        elif value is None:
            entry.update({"pass": None, "note": "not measured (see its section)"})
        else:
            entry["pass"] = bool(value >= threshold if op == ">=" else value <= threshold)
        out[name] = entry
    return out


def finite(obj):
    """JSON without NaN/inf (strict parsers reject them): non-finite floats become null."""
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _fig(d: dict | None, unit: str) -> str:
    if not d or "median" not in d:
        return f"{'-':>10}  {unit}"
    return f"{d['median']:>10,.1f}  {unit:<9} [{d['min']:,.1f} .. {d['max']:,.1f}, IQR {d['iqr']:,.1f}]"


def _measured_or_skipped(d: dict, unit: str) -> str:
    return _fig(d[f"{unit}_per_s"], "tok/s") if f"{unit}_per_s" in d else f"{'skipped':>10}  ({d.get('skipped')})"


def format_table(report: dict) -> str:
    """A readable summary of the report."""
    s, m = report["settings"], report["machine"]
    c = s["config"]
    dev = m["gpu"]["name"] if m.get("gpu") and c["device"] != "cpu" else f"{m['cpus_usable']} CPU cores"
    lines = [f"quarklab bench: {'the tiny world SFT GPT-J' if s['model'] is None else s['model']} on {c['device']} "
             f"({dev}, {m['torch_threads']} torch threads, {s['model_dtype']}); medians of {s['reps']} reps after "
             f"{s['warmup']} warm-up [min .. max, IQR]" + ("  --quick" if s["quick"] else "")]
    sp = report["sampling"]
    lines += ["", f"sampling: {sp['prompts']['count']} TL;DR-length prompts x {c['samples_per_prompt']}, "
              f"{c['max_new_tokens']} new tokens, T={c['temperature']} top-p={c['top_p']} (generated tokens/s)",
              f"  quarklab.sample          {_fig(sp['sampler']['tokens_per_s'], 'tok/s')}",
              f"  raw batched generate     {_fig(sp['raw']['tokens_per_s'], 'tok/s')}",
              f"  generate loop, 1/prompt  {_fig(sp['loop']['tokens_per_s'], 'tok/s')}",
              f"  vLLM                     {_measured_or_skipped(sp['vllm'], 'tokens')}"]
    rw = report["reward"]
    lines += ["", f"reward ({rw['reward']}, {rw['rows']} rows of {rw['distinct_prompts']} prompts)",
              f"  cold (fresh object)      {_fig(rw['cold']['rows_per_s'], 'rows/s')}",
              f"  warm (cached prompts)    {_fig(rw['warm']['rows_per_s'], 'rows/s')}"]
    tr = report["training"]
    lines += ["", f"training: optimizer steps of {tr['batch_size'] * tr['grad_accum']} rows "
              f"({tr['prompt_tokens_per_row_mean']:.0f} prompt + "
              f"{tr['completion_tokens_per_row_mean']:.0f} completion tokens a row; completion tokens/s)",
              f"  quarklab NLL             {_fig(tr['nll']['tokens_per_s'], 'tok/s')}",
              f"  quarklab NLL+KL+entropy  {_fig(tr['kl']['tokens_per_s'], 'tok/s')}",
              f"  TRL SFTTrainer           {_measured_or_skipped(tr['trl'], 'tokens')}"]
    it = report["iteration"]
    ic = it["config"]
    lines += ["", f"Quark run, {ic['iterations']} iteration ({ic['prompts_per_iteration']} prompts x "
              f"{ic['samples_per_prompt']} samples, {it['train_steps']} train steps, {ic['eval_prompts']} eval "
              f"prompts): {it['run_seconds']:.1f} s in run_quark, {it['process_wall_seconds']:.1f} s process, "
              f"peak RSS {it['peak_rss_mb']:,.0f} MB; by the loop's stage marks:"]
    for name, st in sorted(it["stages"].items(), key=lambda kv: -kv[1]["seconds"]):
        lines.append(f"  {name:<24} {st['seconds']:>8.2f} s  {100 * st['share']:>5.1f} %  (entered {st['calls']}x)")
    lines.append(f"  {'(unmarked)':<24} {it['unmarked_seconds']:>8.2f} s  "
                 f"{100 * it['unmarked_seconds'] / it['run_seconds']:>5.1f} %")
    lines += ["", "residency (idle_models): the same run with every model kept, then with the idle ones released",
              *("  " + line for line in format_residency(report["residency"]).splitlines())]
    lines += ["", "targets"]
    for name, t in report["targets"].items():
        verdict = "n/a " if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        note = f"  ({t['note']})" if t.get("note") else ""
        lines.append(f"  {verdict}  {name:<20} {value:>8} {t['op']} {t['target']:g}{note}")
    lines.append(f"\nbench wall time {report['wall_seconds']:.1f} s "
                 f"(world and model load {report['setup_seconds']:.1f} s)"
                 + (f"; {report['process_seconds']:.1f} s with interpreter start and imports"
                    if report.get("process_seconds") else ""))
    return "\n".join(lines)
