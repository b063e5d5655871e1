"""Where a model, dataset or file comes from: a registered name (:mod:`.names`), a local path, or the Hugging Face
hub (online, or its local cache when the hub cannot be reached), with one clear error when none has it."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from .errors import QuarkError, describe
from .names import lookup

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

HUB_PROBE_TIMEOUT = 5.0  # seconds for the one connection attempt that tells whether the hub is reachable


def resolve_model(name_or_path: str | os.PathLike | None) -> str | os.PathLike | None:
    """A model name as a folder or hub id: a registered name (:mod:`quarklab.names`; ``"tiny-tldr"``: the
    offline world's SFT folder, built on first need) is its setup's model folder; anything else is as given."""
    named = lookup(name_or_path)
    return named.policy if named is not None else name_or_path


def resolve_source(name_or_path: str | os.PathLike, what: str = "model", *, repo_type: str = "model",
                   revision: str | None = None) -> str:
    """Return a local path as a string, or a hub id; fail clearly on a missing local path.

    A string that exists on disk is local. One that cannot be a hub id (absolute, ``./``,
    ``~``, more than one ``/``) and does not exist is an error here, rather than a confusing
    hub lookup later. When the hub cannot be used (``HF_HUB_OFFLINE=1``, or one connection
    attempt fails) a hub id resolves to its folder in the local hub cache, or fails at once
    with one error, instead of after half a minute of huggingface_hub's retries; ``revision`` (a branch, tag or
    commit; None: main) picks which cached snapshot.
    """
    s = os.fspath(resolve_model(name_or_path) if repo_type == "model" else name_or_path)
    p = Path(s).expanduser()
    if p.exists():
        return str(p)
    if not s or s.startswith((".", "/", "~")) or not _HUB_ID.match(s):
        raise QuarkError(f"{what} path does not exist: {s!r}")
    why = hub_unavailable()
    if why is None:
        return s
    folder = cached_snapshot(s, repo_type, revision)
    if folder is None:
        from huggingface_hub import constants

        local = "file" if repo_type == "dataset" else "folder"
        raise QuarkError(
            f"{what} {s!r} is neither a local {local} nor in the local hub cache ({constants.HF_HUB_CACHE}), "
            f"and the hub is not available ({why}). Download it once with network "
            f"(hf download {'--repo-type dataset ' if repo_type == 'dataset' else ''}{s}). Offline, pass a local "
            + (".jsonl/.csv/.parquet file or 'tiny-tldr'." if repo_type == "dataset"
               else "folder, e.g. the tiny world's (quarklab world build)."))
    return folder


_HUB_FILE = re.compile(r"^([A-Za-z0-9][\w.-]*/[\w.-]+)/([\w.-]+(?:/[\w.-]+)*)$")


def resolve_file(spec: str | os.PathLike, what: str = "file") -> str:
    """A local file's path, or the local copy of a file in a hub repository named ``owner/repo/path/in/repo``
    (e.g. ``CarperAI/openai_summarize_tldr_rm_checkpoint/pytorch_model.bin``): downloaded once, then read
    from the local hub cache, and only from there when the hub is not available."""
    s = os.fspath(spec)
    p = Path(s).expanduser()
    if p.is_file():
        return str(p)
    match = _HUB_FILE.match(s)
    if p.exists() or match is None or s.startswith((".", "/", "~")):
        raise QuarkError(f"{what} {s!r} is not a file" if p.exists() else f"{what} file does not exist: {s!r}")
    from huggingface_hub import hf_hub_download

    repo_id, filename = match.groups()
    why = hub_unavailable()
    try:
        return hf_hub_download(repo_id, filename, local_files_only=why is not None)
    except Exception as exc:  # not in the cache offline, no such repo or file, network failure
        from huggingface_hub import constants

        where = (f"it is not in the local hub cache ({constants.HF_HUB_CACHE}) and the hub is not available "
                 f"({why})") if why else f"the hub refused it ({type(exc).__name__})"
        raise QuarkError(f"{what} {s!r} (file {filename!r} of the hub repository {repo_id!r}): {where}. Download "
                         f"it once with network (hf download {repo_id} {filename}), or pass a local file.") from exc


def hub_unavailable() -> str | None:
    """Why the Hugging Face hub cannot be used now (a phrase for an error message), or None when it can."""
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").upper() in ("1", "ON", "YES", "TRUE"):
            return f"{var}={os.environ[var]}"
    if constants.HF_HUB_OFFLINE:
        return "offline mode is on"
    return _probe_hub(constants.ENDPOINT)


@functools.lru_cache(maxsize=None)
def _probe_hub(endpoint: str) -> str | None:
    """One connection attempt to the hub, without retries; remembered for the rest of the process."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=HUB_PROBE_TIMEOUT, follow_redirects=False)
    except Exception as exc:  # any connection failure (DNS, refused, timeout, proxy) means offline
        return f"{endpoint} cannot be reached: {type(exc).__name__}"
    return None


def cached_snapshot(repo_id: str, repo_type: str = "model", revision: str | None = None) -> str | None:
    """The folder of ``repo_id``'s cached snapshot (of ``revision``; None: main) in the local hub cache, or None
    when it has none."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, repo_type=repo_type, revision=revision, local_files_only=True)
    except Exception:  # LocalEntryNotFoundError, or a cache folder in a state huggingface_hub rejects
        return None


def load_error(source: str, what: str, exc: Exception) -> QuarkError:
    """One clear error for a local folder that is missing files, or a hub id that failed to load."""
    from huggingface_hub import constants

    if Path(source).exists():
        if Path(source).resolve().is_relative_to(Path(constants.HF_HUB_CACHE).resolve()):
            return QuarkError(f"could not load {what} from its copy in the local hub cache {source!r} "
                              f"({describe(exc)}); the cache holds only part of it: "
                              "download it whole once with network (hf download REPO_ID)")
        return QuarkError(f"could not load {what} from the local folder {source!r} "
                          f"({describe(exc)}); is it a save_pretrained folder?")
    return QuarkError(
        f"could not load {what} {source!r}: not a local folder, and the hub copy is not "
        f"available ({describe(exc)}). "
        "Offline, pass a local folder, e.g. the tiny world's (quarklab world build)."
    )
