"""The label space as one value, and the one precision table behind every precision vocabulary."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from eomt.config import (
    LABEL_KEYS,
    PRECISIONS,
    ConfigError,
    LabelSpace,
    ModelConfig,
    precision,
    preset,
    tiny_config,
)


def test_a_label_space_derives_its_count_and_checks_its_parts() -> None:
    labels = LabelSpace(("a", "b", "c"), stuff=(2,), category_ids=(0, 1, 2))
    assert labels.num_classes == 3 and labels.things == (0, 1)
    assert labels.category_ids == ()  # 0..C-1 is the default, stored as ()
    with pytest.raises(ConfigError, match=r"model.stuff_classes: ids \[3\] outside \[0, 3\)"):
        LabelSpace(("a", "b", "c"), stuff=(3,))
    with pytest.raises(ConfigError, match="model.category_ids: 2 ids for num_classes=3"):
        LabelSpace(("a", "b", "c"), category_ids=(5, 6))
    assert LabelSpace.of(SimpleNamespace(class_names=["x", "y"], stuff_classes=[1], category_ids=[7, 9])) == \
        LabelSpace(("x", "y"), (1,), (7, 9))
    assert LabelSpace.of(SimpleNamespace(class_names=[])) is None


def test_a_model_config_carries_its_label_space_under_the_flat_keys() -> None:
    model = tiny_config()
    assert model.labels is None  # five unnamed classes
    named = model.with_labels(LabelSpace(("a", "b"), (1,), (10, 20)))
    assert named.labels == LabelSpace(("a", "b"), (1,), (10, 20))
    assert (named.num_classes, named.class_names, named.stuff_classes, named.category_ids) == (
        2, ("a", "b"), (1,), (10, 20))
    d = named.to_dict()
    assert all(key in d for key in LABEL_KEYS) and "labels" not in d
    assert ModelConfig.from_dict(d) == named
    coco = preset("coco_panoptic_eomt_large_640").labels
    assert coco is not None and coco.num_classes == 133 and len(coco.stuff) == 53


def test_every_vocabulary_maps_through_the_one_table() -> None:
    from eomt.benchmark import PRECISIONS as BENCH
    from eomt.inference.predictor import DTYPES

    assert PRECISIONS == precision.LIGHTNING_NAMES
    assert sorted(PRECISIONS) == sorted(n for row in precision.TABLE for n in row.lightning)
    assert DTYPES == {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}
    assert BENCH == {
        "fp32": ("float32", None), "bf16": ("bfloat16", None), "bf16-autocast": ("float32", "bfloat16"),
        "fp16": ("float16", None), "fp16-autocast": ("float32", "float16"), "int8": ("float32", None),
    }
    assert precision.by_predictor("int8") is precision.by_name("int8") and precision.by_name("int8").int8
    # The same way of running under its three names.
    row = precision.by_lightning("bf16-mixed")
    assert row.name == "bf16-autocast" and row.autocast and row.torch_dtype == torch.bfloat16
    assert row.weights_torch_dtype == torch.float32
    assert precision.by_predictor("bf16") is precision.by_lightning("bf16-true") is precision.by_name("bf16")
    assert precision.by_predictor("fp16") is precision.by_lightning("16-mixed")  # Predictor's fp16 is autocast
    with pytest.raises(KeyError):
        precision.by_lightning("bf16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is for machines without CUDA")
def test_float16_autocast_falls_back_to_bfloat16_without_cuda() -> None:
    from eomt.training.trainer import lightning_precision

    assert lightning_precision("16-mixed") == "bf16-mixed"
    assert lightning_precision("32-true") == "32-true"
