"""Where relative paths point: the project root, and model, reward or dataset parameters read from it.

Paths mean the same wherever a notebook, a run or the CLI starts: every relative path, in a notebook parameter
(``run_dir``, a model, reward or dataset folder or file, ``extra_run_dirs``, ``seed_run_dirs``, ``config``), in a
run's config (:func:`located`, applied by :func:`quarklab.run_quark`) and in every ``quarklab`` command (run dirs,
``--out``, ``--to``, ``--config`` files, models, rewards, datasets), is read from :func:`project_root`, the folder
holding ``notebooks/`` and ``pyproject.toml`` (found upward from the working directory; outside such a project, the
working directory). So ``runs/demo`` is the same folder for a kernel that JupyterLab starts in ``notebooks/``, for
``quarklab train --run-dir runs/demo`` in ``notebooks/`` or at the root, and for a sweep writing elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import QuarkConfig
from .errors import QuarkError


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The folder that relative paths in notebook parameters are read from: the nearest folder, from
    ``start`` (default: the working directory) upward, that holds both ``pyproject.toml`` and ``notebooks/``
    (a quarklab checkout, or a project laid out like one); outside any such project, ``start`` itself.

    A kernel that JupyterLab starts for ``notebooks/01_….ipynb`` works in ``notebooks/``; one that
    :func:`run_notebooks` starts works in the project root; both find the same root, so
    ``run_dir = "runs/demo"`` is ``<project>/runs/demo`` either way.
    """
    here = Path(start if start is not None else Path.cwd()).expanduser().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "notebooks").is_dir():
            return folder
    return here


def resolve_path(path: str | os.PathLike, *, must_exist: bool = False) -> Path:
    """``path`` as an absolute Path: ``~`` expanded, a relative path joined to :func:`project_root`.

    With ``must_exist``, a path that is not there is one QuarkError naming the resolved path.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise QuarkError(f"a path must be a non-empty string, got {path!r}")
    given = Path(path).expanduser()
    resolved = given if given.is_absolute() else project_root() / given
    if must_exist and not resolved.exists():
        raise QuarkError(f"{str(path)!r} resolves to {resolved}, which does not exist (relative paths are read "
                         f"from the project root, {project_root()})")
    return resolved


def locate(source: Any) -> Any:
    """A model, reward or dataset parameter with a relative path read as :func:`resolve_path` reads it.

    A relative path that exists under the project root, starts with ``./`` or ``../``, or names a
    ``.jsonl``/``.json``/``.csv``/``.parquet`` file becomes that absolute path (so a missing file is
    reported by its resolved path); a reward named ``"path/to/file.py:function"`` keeps its function with the
    file's path made absolute the same way (``"module:function"`` is returned as given: the module is imported
    by name); anything else (a hub id, ``"tiny-tldr"``, ``"auto"``, None, a callable) is returned as given.
    """
    from .data import LOCAL_FORMATS  # here: resolve_path alone (the CLI's) loads no pandas
    from .rewards import callable_spec

    if not isinstance(source, (str, os.PathLike)) or not str(source).strip():
        return source
    text = os.fspath(source)
    named = callable_spec(text)
    if named is not None:
        where, attribute = named
        return f"{resolve_path(where)}:{attribute}" if where.lower().endswith(".py") else source
    resolved = resolve_path(text)
    looks_local = (Path(text).expanduser().is_absolute() or text.startswith(("./", "../"))
                   or Path(text).suffix.lower() in LOCAL_FORMATS)
    return str(resolved) if looks_local or resolved.exists() else source


# The config fields that name a model, a reward or a dataset: a local one is a path.
SOURCE_FIELDS = ("policy", "reference", "reward", "reward_base_model", "dataset")


def located(config: QuarkConfig) -> QuarkConfig:
    """``config`` with its model, reward and dataset fields (:data:`SOURCE_FIELDS`) read by :func:`locate`: a
    relative local path, a ``path/to/file.py:function`` reward included, becomes absolute under the project root
    (hub ids and names stay). A run stores this in its config.json, so every process of the run and ``--resume``,
    from any working directory, load the same files as long as they stay where they are."""
    return config.replace(**{name: locate(getattr(config, name)) for name in SOURCE_FIELDS})
