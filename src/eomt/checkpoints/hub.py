"""Hugging Face hub ids (`tue-mps/coco_panoptic_eomt_large_640`) resolved to a local folder."""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from eomt.checkpoints.io import CheckpointError

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_FILE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".safetensors", ".json", ".pt2", ".onnx", ".ts", ".yaml")
_TRUE = {"1", "true", "yes", "on"}


def looks_like_hub_id(source: str) -> bool:
    """`owner/name` that nothing local could mean: no such path, no file suffix, and no local
    folder named like its first part (`runs/dmeo` with a `runs/` folder here is a mistyped path)."""
    if not _HUB_ID.match(source) or source.lower().endswith(_FILE_SUFFIXES):
        return False
    return not Path(source).exists() and not Path(source.split("/", 1)[0]).is_dir()


def resolve(source: str | Path) -> Path:
    """The local file or folder `source` names, or the downloaded snapshot of a hub id.

    A path that does not exist and could be meant locally raises `CheckpointError` at once,
    naming the missing part and the closest names in the folder that does exist.
    """
    path = Path(source)
    if path.exists():
        return path
    if looks_like_hub_id(str(source)):
        return download(str(source))
    raise CheckpointError(missing_path_message(path))


def missing_path_message(path: Path) -> str:
    """`PATH: no such file or folder`, with what the deepest existing folder holds that is close."""
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    msg = f"{path}: no such file or folder"
    if parent.is_dir() and str(parent) not in ("", "."):
        msg += f" ({parent} exists)"
    try:
        names = sorted(p.name for p in parent.iterdir()) if parent.is_dir() else []
    except OSError:
        names = []
    part = path.relative_to(parent).parts[0] if parent in path.parents else path.name
    close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
    if close:
        msg += f"; did you mean {parent / close[0] if str(parent) != '.' else close[0]}?"
    first = str(path).split("/", 1)[0]
    if _HUB_ID.match(str(path)) and not str(path).lower().endswith(_FILE_SUFFIXES) and Path(first).is_dir():
        msg += f" (not tried as a hub id: the folder {first}/ is here)"
    return msg


def download(repo_id: str, revision: str | None = None) -> Path:
    """Fetch the weights and config of `repo_id` into the HF cache; return the snapshot folder.

    Reads config.json first: a transformers repo (`model_type: eomt`) gets its safetensors, an
    official release its `pytorch_model.bin`. With HF_HUB_OFFLINE set only the cache is used.
    Any failure is one line that says how to pass a local file or folder instead.
    """
    try:
        import huggingface_hub
        from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - a declared dependency
        raise CheckpointError(f"{repo_id}: huggingface_hub is not installed; pass a local path") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE
    try:
        is_hf = _is_transformers_repo(huggingface_hub, repo_id, revision, offline)
        patterns = ["config.json", "model*.safetensors*"] if is_hf else ["config.json", "pytorch_model*.bin*"]
        folder = huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=patterns, local_files_only=offline
        )
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise CheckpointError(
            f"{repo_id}: not a readable Hugging Face hub repository ({type(e).__name__}) and no local "
            "file or folder of that name; check the name or pass a local path"
        ) from None
    except Exception as e:  # network, offline mode, cache miss: all mean "could not fetch"
        if offline:
            why = "HF_HUB_OFFLINE is set and the files are not in the local cache"
        elif isinstance(e, LocalEntryNotFoundError):  # the library's "no connection, no cached copy"
            why = "no connection and the files are not in the local cache"
        else:
            why = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:80] if str(e).strip() else ''}"
        raise CheckpointError(
            f"could not reach the Hugging Face hub for {repo_id!r} ({why}); download the checkpoint "
            "(pytorch_model.bin, or a transformers folder) and pass its local path instead"
        ) from None
    log.info("hub %s -> %s", repo_id, folder)
    return Path(folder)


def _is_transformers_repo(hub: Any, repo_id: str, revision: str | None, offline: bool) -> bool:
    """True when the repo's config.json says `model_type: eomt` or `eomt_dinov3` (absent config: an official release)."""
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        path = hub.hf_hub_download(repo_id, "config.json", revision=revision, local_files_only=offline)
    except EntryNotFoundError as e:
        if isinstance(e, LocalEntryNotFoundError):
            raise
        return False
    try:
        return json.loads(Path(path).read_text()).get("model_type") in ("eomt", "eomt_dinov3")
    except (OSError, ValueError, AttributeError):
        return False
