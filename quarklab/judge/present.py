"""Showing win rates: a figure with the 95 % interval, judged pairs side by side, quoted figures apart."""

from __future__ import annotations

import html

import pandas as pd

from ..errors import QuarkError
from ..present.figures import new_figure, palette
from ..present.html import TABLE_STYLE, fmt_number
from ..tasks import get_task


def win_rate_figure(summaries: list[dict], title: str | None = None):
    """One horizontal bar per measured comparison: the win rate of system A over B with its interval, the
    0.5 line (no preference) and the counts beside each bar. Only measured results belong here: figures
    quoted from elsewhere (another judge, other data) go in :func:`quoted_table`."""
    if isinstance(summaries, dict):
        summaries = [summaries]
    if not summaries:
        raise QuarkError("win_rate_figure needs at least one win-rate summary")
    fig = new_figure(7.5, 1.8 + 0.7 * len(summaries))
    ax = fig.add_subplot()
    colour = palette(1)[0]
    for y, s in enumerate(summaries):
        rate = s["win_rate"] if s.get("judged") else float("nan")
        if rate == rate:
            ax.barh(y, rate, color=colour, height=0.55, label="win rate (ties count half)" if y == 0 else None)
            ax.errorbar(rate, y, xerr=[[rate - s["ci_low"]], [s["ci_high"] - rate]], fmt="none", ecolor="black",
                        capsize=5, label=f"{int(s.get('level', 0.95) * 100)} % bootstrap interval" if y == 0 else None)
        ax.text(1.02, y, f"{fmt_number(rate)}  ({s['wins']} W · {s['ties']} T · {s['losses']} L"
                f"{' · ' + str(s['malformed']) + ' malformed' if s['malformed'] else ''})",
                va="center", fontsize=9, transform=ax.get_yaxis_transform())
    ax.axvline(0.5, color="0.4", linestyle="--", linewidth=1, label="0.5: no preference")
    ax.set_yticks(range(len(summaries)), [f"{s['system_a']}\nvs {s['system_b']}" for s in summaries], fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, len(summaries) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel("win rate of A over B (fraction of prompts)")
    judges = sorted({s["judge"] for s in summaries})
    ax.set_title(title or f"Pairwise win rate, judge {', '.join(judges)}, both orders per pair", fontsize=11)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=3, fontsize=8, frameon=False)
    return fig


def pairs_html(records: pd.DataFrame, n: int = 3, *, system_a: str = "A", system_b: str = "B",
               max_prompt_chars: int = 500, task: str = "tldr") -> str:
    """The first ``n`` judged pairs as a static HTML table: the prompt (shortened as ``task`` shortens it), each
    system's text, and the judge's answer in both orders with the pair's outcome (for system A). All text is
    escaped."""
    need = {"prompt", "completion_a", "completion_b", "raw_ab", "verdict_ab", "raw_ba", "verdict_ba", "outcome"}
    if not isinstance(records, pd.DataFrame) or need - set(records.columns):
        raise QuarkError(f"pairs_html needs win_rate's records (columns {sorted(need)})")
    esc = html.escape
    head = "".join(f'<th scope="col">{esc(t)}</th>' for t in ("prompt", f"A: {system_a}", f"B: {system_b}",
                                                              "judge (A shown first · B shown first)"))
    rows = []
    for _, r in records.head(n).iterrows():
        verdicts = (f"<b>{esc(r['outcome'])}</b> for A<span class=\"meta\">A first: {esc(str(r['verdict_ab']))}"
                    f" · B first: {esc(str(r['verdict_ba']))}</span>"
                    f"<span class=\"meta\">{esc(str(r['raw_ab'])[:300])}</span>"
                    f"<span class=\"meta\">{esc(str(r['raw_ba'])[:300])}</span>")
        rows.append(f'<tr><td class="prompt">{esc(get_task(task).shorten(str(r["prompt"]), max_prompt_chars))}</td>'
                    f'<td class="completion">{esc(str(r["completion_a"]))}</td>'
                    f'<td class="completion">{esc(str(r["completion_b"]))}</td>'
                    f'<td class="completion">{verdicts}</td></tr>')
    caption = (f"{min(n, len(records))} of {len(records)} judged pairs. Each pair is judged twice, with the "
               "summaries in both positions; orders that disagree make a tie.")
    return (TABLE_STYLE + '<div class="quarklab-compare-wrap"><table class="quarklab-compare">'
            f"<caption>{esc(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
            "</table></div>")


def quoted_table(rows: list[dict]) -> pd.DataFrame:
    """Win rates quoted from elsewhere (e.g. a model card's GPT-4 judgments on real TL;DR), as a table of
    their own: ``comparison``, ``win_rate``, ``judge``, ``source``, marked quoted. Never drawn beside measured
    rates: they come from another judge, on other data."""
    table = pd.DataFrame(rows, columns=["comparison", "win_rate", "judge", "source"])
    if len(table) and table[["comparison", "source"]].isna().any().any():
        raise QuarkError("each quoted win rate needs a 'comparison' and the 'source' it is quoted from")
    return table.assign(quoted=True)
