"""Run a network written by `eomt export` (.onnx with onnxruntime, .pt2 ExportedProgram, .ts
TorchScript) as if it were `EoMT`: float images (B, 3, H, W) in [0, 1] -> `EoMTOutput`.

The file carries the resolved `ModelConfig` (`CONFIG_KEY`: ONNX metadata_props, TorchScript / .pt2
extra files, with `img_size` the graph's input size) and the graph's input shape (`INPUT_KEY`), so a
predictor needs nothing else. Writing these files is `eomt.export`'s business.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from eomt.config import ModelConfig
from eomt.errors import InputError, MissingFileError, OptionError
from eomt.models import EoMTOutput

CONFIG_KEY = "eomt.config"  # ONNX metadata key / extra-file name holding the ModelConfig JSON
INPUT_KEY = "eomt.input_shape"  # the same for the graph's fixed input shape (B, 3, H, W)
EXPORTED_SUFFIXES = (".onnx", ".pt2", ".ts")  # a Predictor opens these with `load_exported`, not as checkpoints


class ExportedNetwork:
    """An exported network callable like `EoMT` on float images (B, 3, H, W) in [0, 1].

    Returns an `EoMTOutput` with empty per-block lists. The graph has a fixed batch; other batch
    sizes are run in chunks of that batch (the last chunk zero-padded). Inputs of another size are
    an error (resize or window them first). `.config` is the exported model's `ModelConfig`.
    """

    training = False

    def __init__(self, run: Callable[[Tensor], tuple[Tensor, Tensor]], config: ModelConfig,
                 input_shape: tuple[int, ...], source: Path) -> None:
        self._run = run
        self.config = config
        self.input_shape = tuple(input_shape)  # (B, 3, H, W) the graph was exported at
        self.source = source

    @property
    def img_size(self) -> tuple[int, int]:
        return self.input_shape[2], self.input_shape[3]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def eval(self) -> "ExportedNetwork":
        return self

    def to(self, device: torch.device | str = "cpu", *args: Any, **kwargs: Any) -> "ExportedNetwork":
        """Exported graphs run on the CPU; any other device is an error."""
        if isinstance(device, (str, torch.device)) and torch.device(device).type != "cpu":
            raise OptionError(f"{self.source}: an exported network runs on the CPU, got device {str(device)!r}")
        return self

    def __call__(self, images: Tensor) -> EoMTOutput:
        if images.ndim != 4 or tuple(images.shape[1:]) != tuple(self.input_shape[1:]):
            raise ValueError(
                f"{self.source}: expected images of shape (B, {', '.join(map(str, self.input_shape[1:]))}), "
                f"got {tuple(images.shape)}"
            )
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        images = images.detach().to("cpu", torch.float32)
        b, step = images.shape[0], self.input_shape[0]
        masks, classes = [], []
        for start in range(0, b, step):
            chunk = images[start : start + step]
            n = chunk.shape[0]
            if n < step:
                chunk = torch.cat([chunk, chunk.new_zeros(step - n, *chunk.shape[1:])])
            m, c = self._run(chunk.contiguous())
            masks.append(m[:n])
            classes.append(c[:n])
        return EoMTOutput(torch.cat(masks), torch.cat(classes), [], [])


class OnnxNetwork(ExportedNetwork):
    """An exported .onnx run with onnxruntime on the CPU; see `ExportedNetwork`."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"{path}: no such ONNX file")
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError(f"{path}: running ONNX needs onnxruntime: pip install 'eomt[onnx]'") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        config, shape = _read_meta(meta, path)
        input_name = self.session.get_inputs()[0].name

        def run(x: Tensor) -> tuple[Tensor, Tensor]:
            m, c = self.session.run(None, {input_name: x.numpy()})
            return torch.from_numpy(m), torch.from_numpy(c)

        super().__init__(run, config, shape, path)


def _read_meta(meta: dict[str, str], path: Path) -> tuple[ModelConfig, tuple[int, ...]]:
    if CONFIG_KEY not in meta or INPUT_KEY not in meta:
        raise InputError(
            f"{path}: no {CONFIG_KEY!r} / {INPUT_KEY!r} metadata; expected a file written by `eomt export`"
        )
    return ModelConfig.from_dict(json.loads(meta[CONFIG_KEY])), tuple(json.loads(meta[INPUT_KEY]))


def load_exported(path: str | Path, trust_pickle: bool = False) -> ExportedNetwork:
    """Open a file written by `export_model` (.onnx, .ts TorchScript, .pt2 ExportedProgram).

    Nothing in the file runs on load unless `trust_pickle`: a .pt2 archive is checked first
    (`checkpoints.safety`) and a .ts file, which is code, is refused.
    """
    from eomt.checkpoints import safety

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such exported model file")
    if path.suffix == ".onnx":
        return OnnxNetwork(path)
    meta: dict[str, Any] = {CONFIG_KEY: "", INPUT_KEY: ""}
    if path.suffix == ".pt2":
        if not trust_pickle:
            safety.check_exported_program(path)
        program = torch.export.load(str(path), extra_files=meta)
        module = program.module()
    elif path.suffix in (".ts", ".pt"):
        if not trust_pickle:
            safety.refuse_torchscript(path)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=meta)
    else:
        raise InputError(f"{path}: unknown exported format {path.suffix!r} (expected .onnx, .ts or .pt2)")
    config, shape = _read_meta({k: v for k, v in meta.items() if v}, path)

    def run(x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return module(x)

    return ExportedNetwork(run, config, shape, path)
