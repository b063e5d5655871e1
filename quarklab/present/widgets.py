"""Interactive widgets (ipywidgets 8) for the notebooks: compare tokens, explore quantile cuts.

Every callback is a plain method that reads its state from the instance (set in ``__init__``),
never from notebook globals, so a test (or a headless papermill kernel) can call it directly.
Building a widget needs no browser; displaying ``obj.widget`` in JupyterLab makes it live.
"""

from __future__ import annotations

import html
import time

import ipywidgets as widgets
import numpy as np
import pandas as pd

from ..checks import check_num_quantiles
from ..compare import compare_tokens
from ..errors import QuarkError
from ..quantiles import assign_by_scope, check_scope, quantile_table
from ..tokens import quantile_token_ids
from ..tasks import get_task
from .html import comparison_html, fmt_number
from .figures import png_bytes
from .figures import reward_label as figure_label
from .quantile_plots import quantile_comparison


def _prompt_label(i: int, prompt: str, width: int = 70, task: str = "tldr") -> str:
    """``"3 · <title>"``, the task's title of the prompt (TL;DR: the TITLE line, else the first line), truncated to
    ``width`` characters."""
    title = get_task(task).title_of(prompt)
    if len(title) > width:
        title = title[: width - 1].rstrip() + "…"
    return f"{i} · {title}"


class TokenComparer:
    """Pick a prompt (or type one), set the decoding knobs, press *Regenerate*: the completion for
    each quantile token beside the reference's, with reward, perplexity and length.

    ``prompts`` is a list of str or a DataFrame with ``prompt`` (and ``prompt_id``). Display
    ``self.widget``. :meth:`regenerate` (what the button calls) returns the table and keeps it in
    ``self.last``; errors are shown in ``self.status`` instead of being raised.

    The controls start at the values given (a notebook passes its parameters: ``greedy``,
    ``temperature``, ``top_p``, ``max_new_tokens``, ``seed``); a slider's range widens to hold a value
    outside its usual range rather than clipping it. ``task`` (:mod:`quarklab.tasks`) says how the prompts are
    titled, cut and shown, and what free text becomes.
    """

    def __init__(self, policy, tokenizer, reward, prompts, *, reference=None, num_quantiles: int | None = None,
                 greedy: bool = False, max_new_tokens: int = 48, temperature: float = 0.9, top_p: float = 0.9,
                 seed: int = 0, task: str = "tldr"):
        if isinstance(prompts, str):
            prompts = [prompts]
        if isinstance(prompts, pd.DataFrame):
            if "prompt" not in prompts.columns:
                raise QuarkError(f"the prompts table has no 'prompt' column (columns: {list(prompts.columns)})")
            texts = prompts["prompt"].tolist()
            ids = prompts["prompt_id"].tolist() if "prompt_id" in prompts.columns else list(range(len(texts)))
        else:
            texts = list(prompts)
            ids = list(range(len(texts)))
        if not texts:
            raise QuarkError("TokenComparer needs at least one prompt")
        if not isinstance(greedy, (bool, np.bool_)):
            raise QuarkError(f"greedy must be True or False, got {greedy!r}")
        self.policy, self.tokenizer, self.reward, self.reference = policy, tokenizer, reward, reference
        self.task = get_task(task)
        self.prompts = [str(t) for t in texts]
        self.prompt_ids = ids
        self.token_ids = quantile_token_ids(tokenizer, num_quantiles)  # fails early on a checkpoint without tokens
        self.num_quantiles = len(self.token_ids)
        self.last: pd.DataFrame | None = None
        self.last_prompt: str | None = None
        self.error: Exception | None = None

        style = {"description_width": "110px"}
        wide = widgets.Layout(width="420px")
        self.picker = widgets.Dropdown(options=[(_prompt_label(i, p, task=self.task), i)
                                                for i, p in enumerate(self.prompts)],
                                       value=0, description="prompt", style=style, layout=widgets.Layout(width="640px"))
        self.free_text = widgets.Textarea(value="", placeholder="…or type a post here (used instead of the picked "
                                          f"prompt when not empty; {self.task.free_text})",
                                          description="your post", style=style,
                                          layout=widgets.Layout(width="640px", height="90px"))
        t, p, m = float(temperature), float(top_p), int(max_new_tokens)
        self.temperature = widgets.FloatSlider(value=t, min=min(0.1, t), max=max(2.0, t), step=0.05,
                                               description="temperature", style=style, layout=wide,
                                               readout_format=".2f")
        self.top_p = widgets.FloatSlider(value=p, min=min(0.05, p), max=1.0, step=0.05,
                                         description="top-p", style=style, layout=wide, readout_format=".2f")
        self.max_new_tokens = widgets.IntSlider(value=m, min=min(8, m), max=max(128, m), step=1,
                                                description="max new tokens", style=style, layout=wide)
        self.seed = widgets.IntText(value=int(seed), description="seed", style=style,
                                    layout=widgets.Layout(width="220px"))
        self.greedy = widgets.Checkbox(value=bool(greedy), description="greedy (ignore temperature, top-p, seed)",
                                       indent=False)
        self.button = widgets.Button(description="Regenerate", button_style="primary", icon="refresh",
                                     tooltip="generate one completion per quantile token for the chosen prompt")
        # the table fills the output area's width and wraps inside it (see comparison_html's style)
        self.output = widgets.HTML(value="<i>Press <b>Regenerate</b> to generate.</i>",
                                   layout=widgets.Layout(width="100%", min_width="0"))
        self.status = widgets.Label(value=f"{self.num_quantiles} quantile tokens; token 0 = best reward quantile")
        self.button.on_click(self.regenerate)
        self.greedy.observe(self._sync_sampling_controls, names="value")
        self._sync_sampling_controls()

        knobs = widgets.VBox([self.temperature, self.top_p, self.max_new_tokens])
        side = widgets.VBox([self.seed, self.greedy, widgets.HBox([self.button, self.status])])
        self.widget = widgets.VBox([self.picker, self.free_text, widgets.HBox([knobs, side]), self.output],
                                   layout=widgets.Layout(width="100%"))

    def _sync_sampling_controls(self, *_):
        for w in (self.temperature, self.top_p, self.seed):
            w.disabled = bool(self.greedy.value)

    def current_prompt(self) -> tuple[object, str]:
        """(prompt_id, prompt) the controls select: the free text when not blank, else the picked prompt."""
        text = self.free_text.value or ""
        if text.strip():
            return "free text", self.task.as_prompt(text)
        i = int(self.picker.value)
        return self.prompt_ids[i], self.prompts[i]

    def regenerate(self, *_) -> pd.DataFrame | None:
        """Generate for the chosen prompt with the current control values; show and return the table.

        On an error the message goes to ``self.status`` (and ``self.error``) and None is returned.
        """
        self.button.disabled = True
        start = time.perf_counter()
        try:
            pid, prompt = self.current_prompt()
            self.status.value = "generating…"
            table = compare_tokens(
                self.policy, self.tokenizer, pd.DataFrame({"prompt_id": [pid], "prompt": [prompt]}), self.reward,
                reference=self.reference, num_quantiles=self.num_quantiles, do_sample=not self.greedy.value,
                temperature=float(self.temperature.value), top_p=float(self.top_p.value),
                max_new_tokens=int(self.max_new_tokens.value), seed=int(self.seed.value), task=self.task.name)
            self.output.value = comparison_html(table, task=self.task.name)
        except Exception as exc:  # a widget callback must not raise into the front end
            self.error = exc
            kind = "" if isinstance(exc, QuarkError) else f"{type(exc).__name__}: "
            self.status.value = f"error: {kind}{exc}"
            return None
        finally:
            self.button.disabled = False
        self.error, self.last, self.last_prompt = None, table, prompt
        mode = "greedy" if self.greedy.value else \
            f"T={fmt_number(self.temperature.value)}, top-p={fmt_number(self.top_p.value)}, seed {self.seed.value}"
        self.status.value = f"{len(table)} completions ({mode}) in {time.perf_counter() - start:.1f} s"
        return table


class QuantileExplorer:
    """Slide K and switch local/global: how a scored pool splits into reward quantiles.

    ``samples`` holds ``prompt_id`` and the column ``reward_name`` (and ``num_tokens`` for
    lengths). Shows a summary table (per quantile: count, mean reward, mean length, threshold) and
    the figure of :func:`quarklab.present.quantile_plots.quantile_comparison` for the chosen K and
    scope. ``reward_label`` names the reward on the axes (e.g. the reward's ``.name``; see
    :func:`quarklab.present.figures.reward_label`); by default the column's name.
    :meth:`redraw` (what the controls call) assigns the quantiles once, keeps that assignment in
    ``self.assignment`` and hands it to the summary and the figure; the figure is kept in ``self.figure``.
    """

    def __init__(self, samples: pd.DataFrame, *, num_quantiles: int = 5, scope: str = "local",
                 reward_name: str = "reward", reward_label: str | None = None):
        if not isinstance(samples, pd.DataFrame):
            raise QuarkError(f"samples must be a DataFrame, got {type(samples).__name__}")
        if reward_name not in samples.columns:
            raise QuarkError(f"samples have no {reward_name!r} column (columns: {list(samples.columns)})")
        if check_scope(scope) == "local" and "prompt_id" not in samples.columns:
            raise QuarkError("local quantiles need a 'prompt_id' column in the samples")
        check_num_quantiles(num_quantiles)
        if len(samples) == 0:
            raise QuarkError("no samples to explore")
        self.samples = samples.reset_index(drop=True)
        self.reward_name = reward_name
        self.reward_label = reward_name if reward_label is None else reward_label
        self._axis_label = figure_label(self.reward_label)  # a bad label fails here, once
        self.rewards = self.samples[reward_name].to_numpy(dtype=np.float64)
        # what the quantile figure reads: the reward in 'reward' (reward_name only labels the axes), lengths in 'num_tokens'
        plot = self.samples.assign(reward=self.rewards)
        if "num_tokens" not in plot.columns and "length" in plot.columns:
            plot = plot.assign(num_tokens=plot["length"])
        self._plot_samples = plot
        self.assignment: np.ndarray | None = None
        self.figure = None
        self.error: Exception | None = None

        k = int(num_quantiles)
        self.k = widgets.IntSlider(value=k, min=min(2, k), max=max(10, k), step=1, description="K (quantiles)",
                                   style={"description_width": "100px"}, continuous_update=False)
        self.scope = widgets.ToggleButtons(options=["local", "global"], value=scope,
                                           tooltips=["quantiles within each prompt's samples (ALT)",
                                                     "quantiles over the whole pool (Quark)"])
        # the figure as a PNG in an Image widget: its state is the picture (it survives a page reload), and
        # no Output-widget capture is involved (nbclient can hang on those in headless runs)
        self.image = widgets.Image(format="png")
        self.message = widgets.HTML()
        self.summary = widgets.HTML()
        self.k.observe(self.redraw, names="value")
        self.scope.observe(self.redraw, names="value")
        self.widget = widgets.VBox([widgets.HBox([self.k, self.scope]), self.summary, self.message, self.image])
        self.redraw()

    def summary_table(self, num_quantiles: int, scope: str, quantiles: np.ndarray | None = None) -> pd.DataFrame:
        """Per quantile: count, mean reward, mean length, threshold (as :func:`quarklab.quantile_table`), of the
        assignment ``quantiles`` (made here for ``num_quantiles`` and ``scope`` when None)."""
        if quantiles is None:
            quantiles = self._assign(num_quantiles, scope)
        return quantile_table(self._plot_samples, num_quantiles, scope, quantiles=quantiles).set_index("quantile")

    def _assign(self, num_quantiles: int, scope: str) -> np.ndarray:
        prompt_ids = self.samples["prompt_id"].to_numpy() if "prompt_id" in self.samples.columns else None
        return assign_by_scope(self.rewards, prompt_ids, num_quantiles, scope)

    def _summary_html(self, table: pd.DataFrame, scope: str) -> str:
        thr = "mean per-prompt min reward" if scope == "local" else "min reward"
        rows = "".join(
            f'<tr data-quantile="{q}"><td>{q}{" (best)" if q == 0 else ""}</td><td>{int(r["count"])}</td>'
            f"<td>{fmt_number(r['reward'])}</td><td>{fmt_number(r['length'])}</td>"
            f"<td>{fmt_number(r['threshold'])}</td></tr>"
            for q, r in table.iterrows())
        return ('<table class="quarklab-quantiles" style="border-collapse:collapse;font-size:12px">'
                f"<caption style='text-align:left;caption-side:top'>K = {len(table)}, {html.escape(scope)} "
                f"quantiles of {len(self.rewards)} samples (quantile 0 = highest rewards)</caption>"
                f"<thead><tr><th>quantile</th><th>count</th><th>mean {html.escape(self._axis_label)}</th>"
                "<th>mean length (tokens)</th>"
                f"<th>threshold ({html.escape(thr)})</th></tr></thead><tbody>{rows}</tbody></table>"
                "<style>.quarklab-quantiles td,.quarklab-quantiles th{padding:2px 10px;text-align:right;"
                "border-bottom:1px solid #ddd}</style>")

    def redraw(self, *_) -> np.ndarray:
        """Assign quantiles once for the current K and scope; update the summary and the figure from them."""
        k, scope = int(self.k.value), str(self.scope.value)
        self.assignment = self._assign(k, scope)
        self.summary.value = self._summary_html(self.summary_table(k, scope, self.assignment), scope)
        self._draw_figure(k, scope, self.assignment)
        return self.assignment

    def _draw_figure(self, k: int, scope: str, quantiles: np.ndarray) -> None:
        old, self.figure = self.figure, None
        try:
            self.figure = quantile_comparison(self._plot_samples, k, scope=scope, reward_name=self.reward_label,
                                              quantiles=quantiles)
            self.error = None
        except Exception as exc:  # an observer must not raise into the front end
            self.error = exc
        _close(old)
        if self.figure is not None:
            self.image.value = png_bytes(self.figure, dpi=96)  # 96 dpi, tight box (whatever the backend)
            self.message.value = ""
        else:
            self.message.value = f"<i>no figure: {html.escape(type(self.error).__name__)}: {html.escape(str(self.error))}</i>"
        self.image.layout.display = None if self.figure is not None else "none"
        _close(self.figure)  # shown once, as the Image's value; the Figure stays usable (savefig)


def _close(fig) -> None:
    """Detach ``fig`` from pyplot, so the inline backend does not show it a second time at the end of
    the cell; the Figure object itself stays usable."""
    if fig is None:
        return
    try:
        import matplotlib.pyplot as plt

        plt.close(fig)
    except Exception:
        pass
