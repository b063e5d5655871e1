"""What a person does in JupyterLab, as Playwright steps: open a notebook, Run All, wait, look.

Everything is read from the page (the DOM JupyterLab drew), except the kernel's busy/idle state, which
also comes from the server's REST API (what JupyterLab's own status bar shows).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # the project root: JupyterLab starts here, as the README says
NOTEBOOKS = ROOT / "notebooks"

# cell sources, prompts and outputs, as JupyterLab drew them
_CELLS_JS = """
() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell.jp-CodeCell')].map((c, i) => ({
  index: i,
  source: [...c.querySelectorAll('.jp-InputArea .cm-content .cm-line')].map(l => l.textContent).join('\\n'),
  prompt: (c.querySelector('.jp-InputArea-prompt') || {}).textContent || '',
  outputs: [...c.querySelectorAll('.jp-OutputArea-output')].map(o => ({
    mime: o.getAttribute('data-mime-type') || '',
    text: (o.textContent || '').slice(0, 4000),
    images: o.querySelectorAll('img').length,
    widgets: o.querySelectorAll('.jupyter-widgets').length,
  })),
}))
"""

# where the table sits: inside its output area and the visible notebook, each meta line inside its cell
_TABLE_BOX_JS = """
(table) => {
  const r = e => e.getBoundingClientRect();
  const area = table.closest('.jp-OutputArea'), panel = table.closest('.jp-NotebookPanel');
  const t = r(table), a = r(area), p = r(panel);
  const spills = e => e.scrollWidth > e.clientWidth + 1;  // its text runs past its own box
  const overflowing = [...table.querySelectorAll('.meta')]
      .filter(m => spills(m) || r(m).right > r(m.closest('td')).right + 1).map(m => m.textContent.trim());
  const spilling_cells = [...table.querySelectorAll('td')].filter(spills).length;
  const wrap = table.parentElement, scrolls = wrap !== area && spills(wrap);
  const aligned = [...table.querySelectorAll('td')].map(td => getComputedStyle(td).textAlign);
  return {table: [t.left, t.right, t.width], area: [a.left, a.right, a.width], panel: [p.left, p.right],
          overflowing, spilling_cells, scrolls, right_aligned: aligned.filter(x => x === 'right').length, cells: aligned.length,
          headers: [...table.querySelectorAll('thead th')].map(th => th.childNodes[0].textContent.trim()),
          caption: (table.querySelector('caption') || {}).textContent || '',
          prompt: (table.querySelector('td.prompt') || {}).textContent || ''};
}
"""

_ERROR_RE = re.compile(r"Traceback \(most recent call last\)|^\s*\w*(Error|Exception)\b.*$", re.M)


def _error_line(text: str) -> str:
    """The ``Name: message`` line of a traceback (its last one), else its first error-looking line."""
    lines = [ln.strip() for ln in text.splitlines() if re.match(r"^\s*[\w.]*(Error|Exception|Interrupt)\b:", ln)]
    return (lines[-1] if lines else _ERROR_RE.search(text).group(0).strip())[:400]


class Checks:
    """Problems found while looking at one notebook: all of them are reported together at the end."""

    def __init__(self, name: str):
        self.name, self.problems, self.keys = name, [], set()

    def expect(self, ok: bool, message: str, key=None) -> bool:
        """Record ``message`` when not ``ok``; a problem already recorded under ``key`` is not repeated."""
        if not ok and (key is None or key not in self.keys):
            self.problems.append(message)
            self.keys.add(key)
        return bool(ok)

    def done(self, shots: Path) -> None:
        if self.problems:
            pytest.fail(f"{self.name}: {len(self.problems)} problem(s) seen in JupyterLab "
                        f"(screenshots in {shots}):\n  - " + "\n  - ".join(self.problems), pytrace=False)


def short(source: str, width: int = 70) -> str:
    line = next((ln for ln in source.splitlines() if ln.strip() and not ln.startswith(("import", "from"))), source)
    return (line[: width - 1] + "…") if len(line) > width else line


class Notebook:
    """One notebook open in its own JupyterLab tab (and its own workspace, so nothing else opens with it)."""

    def __init__(self, browser, lab, name: str, shots: Path, checks: Checks):
        self.browser, self.lab, self.name, self.shots, self.checks = browser, lab, name, shots, checks
        self.prefix = name.split("_")[0]
        self.page = None
        self.step = 0

    # ------------------------------------------------------------------ opening, running, waiting
    def open(self, *, reset: bool = True) -> None:
        self.page = self.browser.new_page(viewport={"width": 1440, "height": 900})
        self.page.set_default_timeout(30_000)
        ws = f"/lab/workspaces/{self.prefix}/tree/{self.name}?token={self.lab.token}" + ("&reset" if reset else "")
        self.page.goto(self.lab.url + ws)
        self.page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
        self.wait_idle(timeout=120)

    def close(self) -> None:
        if self.page is not None:
            self.page.close(run_before_unload=False)
            self.page = None

    def kernel_state(self) -> str | None:
        for s in self.lab.sessions():
            if s.get("path") == self.name and s.get("kernel"):
                return s["kernel"].get("execution_state")
        return None

    def wait_idle(self, timeout: float) -> None:
        """Until the kernel is idle (server's view) and no cell shows ``[*]`` (JupyterLab's view), twice in a row."""
        deadline, calm = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            prompts = self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-InputArea-prompt").all_text_contents()
            calm = calm + 1 if self.kernel_state() == "idle" and not any("*" in p for p in prompts) else 0
            if calm >= 3:
                return
            self.page.wait_for_timeout(500)
        self.shot("timeout")
        running = sum("*" in p for p in self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-InputArea-prompt")
                      .all_text_contents())
        raise AssertionError(f"{self.name}: Run All had not finished after {timeout:.0f} s ({running} cell(s) still "
                             f"show [*]; the server reports the kernel {self.kernel_state()!r}); see the last screenshot")

    def run_all(self, timeout: float) -> float:
        """Run > Run All Cells from the menu bar, as a person would; wait for the kernel to finish."""
        start = time.monotonic()
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        self.page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
        self.page.wait_for_timeout(1000)
        self.wait_idle(timeout)
        seconds = time.monotonic() - start
        self.wait_drawn()
        return seconds

    def wait_drawn(self, timeout_ms: int = 30_000) -> None:
        """Widgets draw after the kernel is idle (their state comes over the wire): wait until every cell
        that ends by showing a ``.widget`` drew it (or said "Error displaying widget")."""
        try:
            self.page.wait_for_function(
                """() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell')]
                       .filter(c => /\\.widget\\s*$/.test([...c.querySelectorAll('.jp-InputArea .cm-line')]
                                                          .map(l => l.textContent).join('\\n')))
                       .every(c => c.querySelector('.jp-OutputArea .jupyter-widgets')
                                   || c.querySelector('.jp-OutputArea').textContent.includes('Error displaying widget'))""",
                timeout=timeout_ms)
        except Exception:
            pass  # what is still not drawn is reported by check_outputs

    def save(self) -> None:
        """File > Save (Ctrl+S), and wait until the tab is no longer marked dirty."""
        self.page.locator(".jp-NotebookPanel .jp-Notebook").first.click(position={"x": 5, "y": 5})
        self.page.keyboard.press("Control+s")
        self.page.wait_for_function(
            "() => !document.querySelector('.lm-TabBar-tab.jp-mod-current.jp-mod-dirty')", timeout=30_000)

    # ------------------------------------------------------------------ looking
    def shot(self, what: str, locator=None) -> Path:
        self.step += 1
        path = self.shots / f"{self.prefix}_{self.step:02d}_{what}.png"
        try:
            if locator is not None:
                locator.scroll_into_view_if_needed(timeout=10_000)
                self.page.wait_for_timeout(300)
            self.page.screenshot(path=str(path))
        except Exception as exc:  # a screenshot is for people: never the reason a test fails
            print(f"screenshot {path.name} failed: {exc}")
        return path

    def cells(self) -> list[dict]:
        return self.page.evaluate(_CELLS_JS)

    def cell(self, contains: str):
        """The code cell whose source contains ``contains`` (a Playwright locator)."""
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell").filter(
            has=self.page.locator(".cm-content", has_text=contains)).first

    def check_outputs(self, when: str) -> list[dict]:
        """No error output, every figure drawn as an image, every widget drawn, nothing printed by accident."""
        cells, c = self.cells(), self.checks
        c.expect(bool(cells), f"{when}: no code cells found on the page")
        for cell in cells:
            where = f"{when}, cell {cell['index'] + 1} ({short(cell['source'])!r})"
            for out in cell["outputs"]:
                if out["mime"] == "application/vnd.jupyter.stderr" and _ERROR_RE.search(out["text"]):
                    c.expect(False, f"{where}: error output: {_error_line(out['text'])}",
                             key=(cell["index"], "error", _error_line(out["text"])))
                if "Error displaying widget" in out["text"]:
                    c.expect(False, f"{where}: {out['text'].strip()[:200]!r} (the widget's model is gone)",
                             key=(cell["index"], "widget-error"))
                if "save_figure(" not in cell["source"] and re.search(r"<Figure size \d+x\d+ with \d+ Axes>", out["text"]):
                    c.expect(False, f"{where}: a figure printed as text {out['text'].strip()[:60]!r}, not drawn",
                             key=(cell["index"], "figure-text"))
                if re.fullmatch(r"\s*(Posix|Windows)?Path\(.*\)\s*", out["text"]):
                    c.expect(False, f"{where}: prints a bare {out['text'].strip()[:80]!r}", key=(cell["index"], "path"))
                if re.match(r"\s*(VBox|HBox|Box|IntProgress|FloatProgress|HTML|Image|Output)\(", out["text"]):
                    c.expect(False, f"{where}: a widget shown as its text {out['text'].strip()[:80]!r}, "
                                    "not drawn (no widget manager)", key=(cell["index"], "widget-text"))
            if "save_figure(" in cell["source"]:
                texts = [o["text"].strip()[:60] for o in cell["outputs"] if o["text"].strip()]
                c.expect(any(o["images"] for o in cell["outputs"]),
                         f"{where}: a figure cell that drew no image (its output: {texts or 'none'})",
                         key=(cell["index"], "no-image"))
            last = cell["source"].strip().splitlines()[-1] if cell["source"].strip() else ""
            if last.endswith(".widget"):
                c.expect(any(o["widgets"] for o in cell["outputs"]),
                         f"{where}: the widget was not drawn (outputs: {[o['mime'] for o in cell['outputs']] or 'none'})",
                         key=(cell["index"], "no-widget"))
        return cells

    def table_box(self, table) -> dict:
        table.scroll_into_view_if_needed(timeout=10_000)
        return table.evaluate(_TABLE_BOX_JS)

    def check_table(self, box: dict, where: str, k: int) -> None:
        """K token columns plus the reference, inside the output area and the visible notebook, readable."""
        c = self.checks
        want = ["prompt"] + [f"token {i}" for i in range(k)] + ["reference"]
        c.expect(box["headers"] == want, f"{where}: the table's columns are {box['headers']}, expected {want}")
        (tl, tr, tw), (al, ar, aw), (pl, pr) = box["table"], box["area"], box["panel"]
        c.expect(tl >= al - 1 and tr <= ar + 1,
                 f"{where}: the table ({tw:.0f} px wide, x {tl:.0f}..{tr:.0f}) does not fit in its output area "
                 f"({aw:.0f} px, x {al:.0f}..{ar:.0f}): it is clipped or needs sideways scrolling")
        c.expect(tr <= pr + 1, f"{where}: the table's right edge ({tr:.0f}) is past the notebook's ({pr:.0f})")
        c.expect(not box["scrolls"], f"{where}: the table is wider than its box and needs sideways scrolling")
        c.expect(not box["spilling_cells"], f"{where}: the text of {box['spilling_cells']} table cell(s) runs past "
                                            "the cell's edge (clipped or over the next column)")
        c.expect(not box["overflowing"],
                 f"{where}: {len(box['overflowing'])} reward · ppl · tokens line(s) run past their column into "
                 f"the next, e.g. {box['overflowing'][:1]}")
        c.expect(box["right_aligned"] == 0,
                 f"{where}: {box['right_aligned']} of {box['cells']} table cells are right-aligned prose "
                 "(JupyterLab's default table style is not overridden)")
        c.expect(not re.search(r"\d\.\d{5,}", box["caption"]),
                 f"{where}: the caption prints an unrounded number: {box['caption'][:200]!r}")
