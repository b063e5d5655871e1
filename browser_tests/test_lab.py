"""The five notebooks in JupyterLab, in a real Chromium, as a person uses them.

For each notebook: open it from a JupyterLab started as the README says, Run All from the menu, wait for
the kernel, then look: no error output, every figure drawn as an image, every widget drawn. Then, in 01,
move K and switch the scope (the figure must follow); in 03, pick a prompt, type a post, move the
temperature and seed, toggle greedy and press *Regenerate* (the table must change, show K token columns and
the reference, and fit its output area). Last, save, close the tab and reopen it while the kernel still
runs: the widgets must come back. The tests run in notebook order: 03 and 04 read the run 02 trains or
reopens. Screenshots of every step go to runs/browser/<timestamp>/.
"""

from __future__ import annotations

import hashlib
import re

import pytest

from jlab import NOTEBOOKS, Checks, Notebook

from quarklab import notebooks as ql_notebooks

# seconds for Run All on a busy 2-core CPU. 02 reopens the demo run (conftest's demo_run): it must not train.
RUN_ALL_TIMEOUT = {"01_quantile_distributions.ipynb": 300, "02_training_iterations.ipynb": 180,
                   "03_compare_tokens.ipynb": 180, "04_tradeoffs.ipynb": 120, "05_win_rates.ipynb": 120}
POST = ("I moved to a new city for work and my roommate keeps eating my food without asking. I left notes and "
        "talked to him twice, but nothing changed. Should I move out or lock my food away?")


def _picture(img) -> str:
    """A digest of the pixels an <img> shows (its src is a fresh blob URL on every update)."""
    data = img.evaluate("""img => { const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        c.getContext('2d').drawImage(img, 0, 0); return c.toDataURL(); }""")
    return hashlib.sha1(data.encode()).hexdigest()


def _wait_for_picture_change(nb: Notebook, img, before: str, timeout_s: float) -> bool:
    for _ in range(int(timeout_s * 2)):
        try:
            if img.evaluate("i => i.complete && i.naturalWidth > 0") and _picture(img) != before:
                return True
        except Exception:  # the image element is being replaced
            pass
        nb.page.wait_for_timeout(500)
    return False


def visit(browser, lab, shots, untouched, name: str, interact=None) -> None:
    """Open ``name``, Run All, check what is drawn; ``interact(nb, checks)`` next; then save, reopen, check."""
    checks = Checks(name)
    nb = Notebook(browser, lab, name, shots, checks)
    try:
        nb.open()
        nb.shot("opened")
        try:
            seconds = nb.run_all(timeout=RUN_ALL_TIMEOUT[name])
        except AssertionError as exc:
            written = sorted(p.name for p in NOTEBOOKS.iterdir()
                             if p not in untouched["existed"] and p.name != ".ipynb_checkpoints")
            hint = (f" It is writing {written} under notebooks/: it did not find the project's runs/demo (run_dir is "
                    "taken relative to the kernel's working directory notebooks/) and trains a new run there."
                    if written else "")
            pytest.fail(f"{exc}.{hint}", pytrace=False)
        print(f"{name}: Run All took {seconds:.0f} s")
        nb.shot("ran_all")
        cells = nb.check_outputs("after Run All")
        for cell in cells:  # one screenshot per figure or widget, for people to look at
            if "save_figure(" in cell["source"] or cell["source"].strip().endswith(".widget"):
                nb.shot(f"cell{cell['index'] + 1}", nb.page.locator(".jp-NotebookPanel .jp-CodeCell")
                        .nth(cell["index"]).locator(".jp-OutputArea"))
        written = sorted(p.name for p in NOTEBOOKS.iterdir()
                         if p not in untouched["existed"] and p.name != ".ipynb_checkpoints")
        run_dir = ql_notebooks.declared_defaults(NOTEBOOKS / name).get("run_dir")
        checks.expect(not written, f"the notebook wrote {written} into notebooks/: run_dir = {run_dir!r} was "
                                   "taken relative to the kernel's working directory (notebooks/, where JupyterLab "
                                   "starts it), not the project, so it misses the project's runs/")
        if interact is not None:
            interact(nb, checks)
        # reopen while the kernel still runs (what a person does after a reload or closing the tab)
        nb.save()
        nb.close()
        nb.open()
        nb.wait_drawn()
        nb.shot("reopened")
        nb.check_outputs("after saving and reopening the tab while the kernel runs")
    finally:
        nb.close()
        for s in lab.sessions():  # this notebook's kernel is not needed any more
            if s.get("path") == name:
                lab.api(f"/api/sessions/{s['id']}", method="DELETE", timeout=30)
        path = NOTEBOOKS / name  # the save above wrote outputs into a committed notebook: put it back now
        if path.read_bytes() != untouched["notebooks"][path]:
            path.write_bytes(untouched["notebooks"][path])
    checks.done(shots)


def explore_quantiles(nb: Notebook, c: Checks) -> None:
    """01: move K, then switch the scope; the explorer's figure must follow both."""
    cell = nb.cell("QuantileExplorer(")
    out = cell.locator(".jp-OutputArea")
    img, summary = out.locator("img").first, out.locator(".widget-html").first
    k_slider = out.locator(".widget-hslider").first
    if not c.expect(img.count() == 1 and k_slider.count() == 1, "01 explorer: no figure or no K slider drawn"):
        return
    k0 = int(k_slider.locator(".widget-readout").text_content().strip())
    height = img.bounding_box()["height"]
    c.expect(height <= 1000, f"01 explorer: the figure is {height:.0f} px tall on the page: it does not fit a "
                             "screen (at most 1000 px)")
    pic0, table0 = _picture(img), summary.inner_html()
    k_slider.locator(".noUi-handle").focus()
    k_slider.locator(".noUi-handle").press("ArrowRight")  # K + 1, as a person does with the keyboard
    nb.page.wait_for_timeout(300)
    k1 = int(k_slider.locator(".widget-readout").text_content().strip())
    c.expect(k1 == k0 + 1, f"01 explorer: the K slider reads {k1} after one step right from {k0}")
    changed = _wait_for_picture_change(nb, img, pic0, 60)
    nb.shot(f"explorer_K{k1}", cell)
    c.expect(changed, f"01 explorer: the figure did not change within 60 s when K went from {k0} to {k1}")
    c.expect(summary.inner_html() != table0, f"01 explorer: the summary table did not change when K went to {k1}")

    buttons = out.locator(".widget-toggle-buttons button")
    current = out.locator(".widget-toggle-buttons button.mod-active").text_content().strip()
    other = next(t.strip() for t in buttons.all_text_contents() if t.strip() != current)
    pic1, table1 = _picture(img), summary.inner_html()
    buttons.filter(has_text=re.compile(rf"^\s*{other}\s*$")).click()
    try:
        nb.page.wait_for_function("([el, old]) => el.innerHTML !== old", arg=[summary.element_handle(), table1],
                                  timeout=60_000)
    except Exception:
        c.expect(False, f"01 explorer: the summary table did not change within 60 s when the scope went "
                        f"{current} -> {other}")
    changed = _wait_for_picture_change(nb, img, pic1, 20)
    nb.shot(f"explorer_{other}", cell)
    c.expect(changed, f"01 explorer: the figure did not change when the scope went {current} -> {other} "
                      "(the table did): the figure does not follow the scope")


_OBSERVE_JS = """root => { window.__qlSeen = {disabled: false, generating: false};
  const mark = () => { const b = [...root.querySelectorAll('button')].find(b => b.textContent.includes('Regenerate'));
    if (b && b.disabled) window.__qlSeen.disabled = true;
    if (root.textContent.includes('generating')) window.__qlSeen.generating = true; };
  if (window.__qlObserver) window.__qlObserver.disconnect();
  window.__qlObserver = new MutationObserver(mark);
  window.__qlObserver.observe(root, {subtree: true, childList: true, attributes: true, characterData: true}); }"""


def _regenerate(nb: Notebook, c: Checks, out, what: str) -> str | None:
    """Press Regenerate; wait until the widget said "generating…" and then reported its completions.
    Returns the table's HTML (None when nothing came)."""
    status = out.locator(".widget-hbox > div.widget-label")  # the Label beside the button (not a description)
    out.element_handle().evaluate(_OBSERVE_JS)
    out.locator("button", has_text="Regenerate").click()
    try:
        nb.page.wait_for_function(
            """root => window.__qlSeen.generating && !root.textContent.includes('generating')""",
            arg=out.element_handle(), timeout=90_000)
    except Exception:
        c.expect(False, f"03 comparer, {what}: no \"generating…\" then result within 90 s after Regenerate "
                        f"(status {status.text_content()!r})")
        return None
    seen = nb.page.evaluate("window.__qlSeen")
    text = status.text_content()
    c.expect(seen["disabled"], f"03 comparer, {what}: the Regenerate button was not disabled while generating")
    c.expect("completions" in text and not text.startswith("error"), f"03 comparer, {what}: status {text!r}")
    table = out.locator("table.quarklab-compare")
    return table.first.evaluate("t => t.outerHTML") if table.count() else None


def compare_tokens(nb: Notebook, c: Checks) -> None:
    """03: the static table, then the widget: another prompt, a typed post, temperature, seed, greedy."""
    params = ql_notebooks.declared_defaults(NOTEBOOKS / nb.name)
    k = int(params.get("num_quantiles", 5))
    static = nb.cell("comparison_html(").locator(".jp-OutputArea table.quarklab-compare").first
    if c.expect(static.count() == 1, "03: the static comparison table was not drawn"):
        nb.check_table(nb.table_box(static), "03 static table", k)

    cell = nb.cell("TokenComparer(")
    out = cell.locator(".jp-OutputArea")
    picker, greedy = out.locator(".widget-dropdown select"), out.locator(".widget-checkbox input[type=checkbox]")
    if not c.expect(picker.count() == 1 and greedy.count() == 1, "03 comparer: the widget's controls were not drawn"):
        return
    nb.shot("comparer", cell)
    if "greedy" in params:
        c.expect(greedy.is_checked() == bool(params["greedy"]),
                 f"03 comparer: its greedy box starts {'ticked' if greedy.is_checked() else 'unticked'} while the "
                 f"notebook sets greedy = {params['greedy']}: the parameter is not passed to the widget")

    def table_of(what: str, before: str | None, **want) -> str | None:
        html = _regenerate(nb, c, out, what)
        nb.shot(re.sub(r"\W+", "_", what).strip("_"), cell)
        if not c.expect(html is not None, f"03 comparer, {what}: no table after Regenerate"):
            return None
        c.expect(html != before, f"03 comparer, {what}: the table did not change after Regenerate")
        box = nb.table_box(out.locator("table.quarklab-compare").first)
        nb.check_table(box, f"03 comparer, {what}", k)
        for part, pattern in want.items():
            text = box["prompt"] if part == "prompt" else box["caption"]
            c.expect(re.search(pattern, text, re.I), f"03 comparer, {what}: the {'prompt cell' if part == 'prompt' else 'caption'} "
                                                     f"does not show {pattern!r}: {text[:200]!r}")
        return html

    # 1. another prompt from the picker
    label = picker.locator("option").nth(1).text_content()
    picker.select_option(index=1)
    title = re.escape(label.replace("\xa0", " ").split("·", 1)[-1].strip().rstrip("…").strip()[:40])
    html = table_of("another prompt", None, prompt=title)

    # 2. a typed post, sampled at a higher temperature with another seed
    out.locator(".widget-textarea textarea").click()
    nb.page.keyboard.type(POST)
    if greedy.is_checked():
        greedy.click()
    temp = out.locator(".widget-hslider").filter(has=nb.page.locator("label", has_text="temperature"))
    before = temp.locator(".widget-readout").text_content().strip()
    temp.locator(".noUi-handle").focus()
    for _ in range(4):
        temp.locator(".noUi-handle").press("ArrowRight")
    after = temp.locator(".widget-readout").text_content().strip()
    c.expect(after != before, f"03 comparer: the temperature slider did not move ({before} -> {after})")
    seed = out.locator(".widget-text").filter(has=nb.page.locator("label", has_text="seed")).locator("input")
    seed.fill("7")
    seed.press("Enter")
    nb.page.wait_for_timeout(300)
    sampled = table_of("typed post sampled", html, prompt=re.escape(POST[:40]),
                       caption=rf"(?=.*{re.escape(after.rstrip('0'))})(?=.*seed 7\b)")

    # 3. greedy: temperature and seed go grey, the table changes
    greedy.click()
    nb.page.wait_for_timeout(300)
    c.expect(temp.locator(".noUi-target[disabled]").count() == 1 or temp.locator("[disabled]").count() > 0,
             "03 comparer: the temperature slider stays active with greedy ticked")
    table_of("typed post greedy", sampled, caption=r"greedy")

    # 4. back to sampling with the same seed: the same completions (reproducible per seed)
    greedy.click()
    nb.page.wait_for_timeout(300)
    again = _regenerate(nb, c, out, "sampled again, seed 7")
    nb.shot("sampled_again_seed_7", cell)
    c.expect(again is not None and again == sampled,
             "03 comparer: sampling again with the same settings and seed 7 gave another table (not reproducible)")


INTERACT = {"01_quantile_distributions.ipynb": explore_quantiles, "03_compare_tokens.ipynb": compare_tokens}


@pytest.mark.parametrize("name", ql_notebooks.NOTEBOOKS, ids=[n[:2] for n in ql_notebooks.NOTEBOOKS])
def test_notebook_in_jupyterlab(browser, lab, shots, notebooks_untouched, demo_run, name):
    visit(browser, lab, shots, notebooks_untouched, name, INTERACT.get(name))


def test_the_demo_run_makes_token_0_better_and_orders_the_tokens(demo_run):
    """What a person reads off notebook 02 as shipped: the tiny preset's run (the one `make demo` and these tests
    train) lifts token 0 over the SFT reference and orders the tokens by reward (README: 3.92 vs 3.35). This suite
    trains that run anyway, so the claim is checked here rather than by a second training in `make test`."""
    import quarklab as ql
    from quarklab import runs

    config = runs.read_config(demo_run)
    if config != ql.preset("tiny"):
        pytest.skip(f"{demo_run} holds a run of other settings than notebook 02's defaults; move it away to retrain")
    metrics = runs.read_metrics(demo_run)
    table = ql.final_table(metrics)
    sft = table[table["iteration"] == 0]["reward"].iloc[0]
    last = table[table["iteration"] == table["iteration"].max()].set_index("token")
    assert last.loc[0, "reward"] > sft + 0.2
    ev = metrics[(metrics["kind"] == "eval") & (metrics["iteration"] == metrics["iteration"].max())]
    assert ev["order_spearman"].iloc[0] <= -0.9
