"""The one source resolver: a checkpoint source (file, folder, hub id) -> the content of its weights.

Used by `loader.read_source` (EoMT checkpoints, `load_model`, `init_from`) and
`dinov2.load_dinov2_backbone` alike, so a path, a saved folder and a hub id mean the same
everywhere:
- a file: read as it is (safetensors with its metadata, or a torch archive);
- a folder: its weight file, looked for in `io.WEIGHT_FILES` order (a shard index merges its shards);
- `owner/name` that nothing local could mean: the hub snapshot (`hub.resolve`), then as a folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eomt.checkpoints.hub import resolve
from eomt.checkpoints.io import find_weight_file, read_sharded, read_tensor_file


def weight_file(source: str | Path) -> Path:
    """The weight file (or shard index) a source names; raises `CheckpointError` naming what is missing."""
    path = resolve(source)  # a local path, else a hub id when nothing local could be meant
    return find_weight_file(path) if path.is_dir() else path


def read_weights(source: str | Path, trust_pickle: bool = False) -> tuple[Any, dict[str, str], Path]:
    """(content, safetensors metadata or {}, the file read) of a checkpoint source.

    The content is what the file holds (a state dict, a Lightning checkpoint, a training
    checkpoint); a shard index gives the merged state dict of its shards. Unreadable files raise
    `CheckpointError` naming the file.
    """
    file = weight_file(source)
    if file.name.endswith(".index.json"):
        return read_sharded(file, trust_pickle), {}, file
    obj, meta = read_tensor_file(file, trust_pickle)
    return obj, meta, file
