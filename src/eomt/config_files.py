"""The YAML experiment configs shipped in the package, and how a config argument finds its file.

A config argument (`eomt train|eval|data check|configs SOURCE`) is, in this order:
  1. a path to a YAML file that exists;
  2. a bundled config by name, `coco/panoptic/eomt_large_640` (`.yaml` optional). A checkout path
     such as `configs/coco/panoptic/eomt_large_640.yaml` that does not exist where the command runs
     (an installed package used from another folder) names the bundled file too;
  3. a preset name, `coco_panoptic_eomt_large_640` (or the short `eomt_large_640`, the COCO
     panoptic row): the bundled config that reproduces that preset, so it carries its dataset and
     recipe, not only the network.
Anything else is a one-line error that suggests the closest bundled names.
"""

from __future__ import annotations

import difflib
import re
from importlib import resources
from pathlib import Path, PurePosixPath

from eomt.config.presets import PRESET_ALIASES, PRESET_NAMES
from eomt.config.parse import ConfigError

_SUFFIXES = (".yaml", ".yml")


class ConfigNotFoundError(ConfigError, FileNotFoundError):
    """A config argument that is neither a YAML file, a bundled config nor a preset."""


def configs_dir() -> Path:
    """The folder of the bundled YAML configs (package data, in a checkout and an installed wheel)."""
    return Path(str(resources.files("eomt") / "configs"))


def bundled_configs() -> dict[str, Path]:
    """Bundled config name (`coco/panoptic/eomt_large_640`) -> its YAML file, sorted by name."""
    root = configs_dir()
    files = sorted(root.rglob("*.yaml"))
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in files}


def preset_configs() -> dict[str, str]:
    """Preset name -> the bundled config that reproduces it.

    Presets and paper configs correspond by dataset, task and size: the preset
    `coco_panoptic_eomt_large_640` is reproduced by `coco/panoptic/eomt_large_640`.
    """
    by_key = {name.replace("/", "_"): name for name in bundled_configs()}
    return {p: by_key[p] for p in PRESET_NAMES if p in by_key}


def bundled_name(source: str | Path) -> str | None:
    """The bundled config that `source` names (a name, a checkout path or a preset), else None."""
    name = _normalise(str(source))
    if name in bundled_configs():
        return name
    if "/" not in name:  # a preset, or the short form of a COCO panoptic preset
        presets = preset_configs()
        for key in (PRESET_ALIASES.get(name, name), f"coco_panoptic_{name}"):
            if key in presets:
                return presets[key]
    return None


def find_config(source: str | Path) -> Path | None:
    """The YAML file `source` names (see the module docstring), or None when it names none."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    name = bundled_name(source)
    return bundled_configs()[name] if name else None


def resolve_config(source: str | Path) -> Path:
    """The YAML file `source` names: an existing file, a bundled config name or a preset name.

    Raises `ConfigNotFoundError` (a `ConfigError` and a `FileNotFoundError`) with the closest
    bundled names when it names none.
    """
    path = find_config(source)
    if path is None:
        raise ConfigNotFoundError(not_found_message(str(source)))
    return path


def suggestions(source: str, n: int = 3) -> list[str]:
    """Bundled config names close to `source` (written as a name, a path or a preset), closest first."""
    forms = {name: name for name in bundled_configs()}
    forms.update({name.replace("/", "_"): name for name in bundled_configs()})  # preset-like spelling
    close = difflib.get_close_matches(_normalise(source), list(forms), n=2 * n, cutoff=0.6)
    return list(dict.fromkeys(forms[c] for c in close))[:n]


def not_found_message(source: str) -> str:
    """One line: `source` names no config, with the closest bundled names."""
    looks_like_path = "/" in source or "\\" in source or source.endswith(_SUFFIXES)
    what = "config file not found" if looks_like_path else "not a config file, bundled config or preset"
    close = suggestions(source)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"{source}: {what}{hint} (`eomt configs` lists the bundled configs and presets)"


def header(path: str | Path) -> str:
    """The comment block at the top of a YAML config, as one line of text."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(line for line in lines if line)


def summary(path: str | Path) -> str:
    """What a config is for, in a few words from its header: the result it reproduces, or its first clause."""
    text = header(path)
    # Paper configs: "Reproduces the paper's <preset> row (...): expected PQ 56.0 at 640x640, ..."
    paper = re.match(r"Reproduces the (?:paper's|official model zoo's) \S+ row .*?: expected (.+?) at \d+x\d+", text)
    if paper:
        return f"reproduces {paper.group(1)}"
    return re.split(r"(?<=[.:])\s", text, maxsplit=1)[0].rstrip(".:")


def _normalise(source: str) -> str:
    """`configs/coco/panoptic/eomt_large_640.yaml` (or a deeper checkout path) -> `coco/panoptic/eomt_large_640`."""
    parts = PurePosixPath(source.replace("\\", "/")).parts
    if "configs" in parts:  # configs/..., src/eomt/configs/..., /elsewhere/eomt/configs/...
        parts = parts[len(parts) - parts[::-1].index("configs") :]
    name = "/".join(parts)
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
