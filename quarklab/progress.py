"""Progress bars: tqdm's text bars everywhere, Jupyter included.

``tqdm.auto`` draws ipywidgets bars in Jupyter, and a bar that finishes with ``leave=False`` closes its
widget: reopening a notebook while its kernel still runs then shows "Error displaying widget: model
not found" for each one. Text bars read the same in a terminal, in JupyterLab (also after a reopen)
and in a notebook executed by papermill, where :func:`quarklab.notebooks.run_notebooks` keeps each
bar's last state as one line.
"""

from tqdm.std import tqdm

__all__ = ["tqdm"]
