"""One table of numeric precisions and the three names each goes by.

The project speaks of precision in three places, each with its own established vocabulary:

- `Predictor(dtype=...)` and `eomt predict --dtype`: `fp32`, `bf16`, `fp16`, `int8`;
- the benchmarks (`eomt bench --precision`, `benchmarks/`): `fp32`, `bf16`, `bf16-autocast`, `fp16`,
  `fp16-autocast`, `int8`, which name the weights' dtype and, with `-autocast`, fp32 weights run under
  autocast;
- training (`train.precision`): Lightning's names, `32-true`, `bf16-true`, `bf16-mixed`, `16-mixed`.

Each row of `TABLE` is one way of running the network and gives its name in every vocabulary
(None or () where that vocabulary has no such mode). Note that `Predictor`'s `fp16` is autocast (the
benchmark's `fp16-autocast`, Lightning's `16-mixed`), while its `bf16` converts the weights (the
benchmark's `bf16`, Lightning's `bf16-true`). `int8` is inference on the CPU only: the ViT blocks'
linear layers hold int8 weights and quantise their inputs per call (`eomt.models.fast.int8`), all
else runs in fp32; training has no such mode.

Torch dtypes are held by name (`"bfloat16"`) so that reading a config does not import torch;
`Precision.torch_dtype` and `Precision.weights_torch_dtype` resolve them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Precision:
    """One numeric precision.

    name: the benchmark's name (the most explicit of the three), e.g. `bf16-autocast`.
    predictor: `Predictor`'s `dtype` name, None where `Predictor` has no such mode.
    lightning: Lightning's `precision` names accepted by `train.precision` (the first is canonical;
        () where training does not offer it).
    dtype: the compute dtype by torch name (`float32`, `bfloat16`, `float16`).
    autocast: True: fp32 weights, operations under `torch.autocast(dtype)`; False: weights and
        activations are stored in `dtype` ("true" precision).
    int8: True: the ViT blocks' linear layers are replaced by int8 ones (`dtype` is then the
        precision of everything else and of the activations between layers); CPU inference only.
    """

    name: str
    predictor: str | None
    lightning: tuple[str, ...]
    dtype: str
    autocast: bool
    int8: bool = False

    @property
    def weights_dtype(self) -> str:
        """The dtype the weights are stored in: fp32 under autocast, else `dtype`."""
        return "float32" if self.autocast else self.dtype

    @property
    def torch_dtype(self) -> Any:
        """The compute dtype as a `torch.dtype`."""
        import torch

        return getattr(torch, self.dtype)

    @property
    def weights_torch_dtype(self) -> Any:
        """The weights' dtype as a `torch.dtype`."""
        import torch

        return getattr(torch, self.weights_dtype)


TABLE: tuple[Precision, ...] = (
    Precision("fp32", "fp32", ("32-true", "32"), "float32", autocast=False),
    Precision("bf16", "bf16", ("bf16-true",), "bfloat16", autocast=False),
    Precision("bf16-autocast", None, ("bf16-mixed",), "bfloat16", autocast=True),
    Precision("fp16", None, (), "float16", autocast=False),
    Precision("fp16-autocast", "fp16", ("16-mixed",), "float16", autocast=True),
    Precision("int8", "int8", (), "float32", autocast=False, int8=True),
)

# The names of each vocabulary, in the order each has always listed them.
BENCHMARK_NAMES: tuple[str, ...] = tuple(p.name for p in TABLE)
PREDICTOR_NAMES: tuple[str, ...] = tuple(p.predictor for p in TABLE if p.predictor)
# Training's default (bf16-mixed) first, as `train.precision` has always listed them.
LIGHTNING_NAMES: tuple[str, ...] = ("bf16-mixed", "16-mixed", "32-true", "32", "bf16-true")


def by_name(name: str) -> Precision:
    """The row whose benchmark name is `name`; KeyError if none."""
    return _find(name, lambda p: (p.name,), "precision")


def by_predictor(name: str) -> Precision:
    """The row whose `Predictor` dtype name is `name` (`fp32`, `bf16`, `fp16`, `int8`); KeyError if none."""
    return _find(name, lambda p: (p.predictor,), "dtype")


def by_lightning(name: str) -> Precision:
    """The row of a Lightning precision name (`bf16-mixed`, `32-true`, ...); KeyError if none."""
    return _find(name, lambda p: p.lightning, "train.precision")


def _find(name: str, names: Any, vocabulary: str) -> Precision:
    for p in TABLE:
        if name in names(p):
            return p
    raise KeyError(f"{vocabulary}: unknown precision {name!r}")

