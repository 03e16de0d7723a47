"""Config values are coerced from the dataclasses' type hints in one place (`eomt.config.parse`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from eomt.config import ConfigError, ExperimentConfig, TrainConfig, from_dict, load_experiment, tiny_config

ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = str(ROOT / "src/eomt/configs/synthetic/panoptic.yaml")


@dataclass(frozen=True)
class Example:
    """A config class with no parsing code of its own: every field is read from its type hint."""

    count: int = 1
    ratio: float = 0.5
    flag: bool = False
    name: str = ""
    size: tuple[int, int] = (1, 1)
    values: tuple[float, ...] = ()
    windows: tuple[tuple[float, float], ...] = ()
    limit: int | None = None
    extra: Any = None


def test_a_new_config_class_is_coerced_from_its_type_hints() -> None:
    got = from_dict(Example, {
        "count": "3", "ratio": 1, "flag": "yes", "name": 32, "size": 640, "values": [1, 2],
        "windows": [[0, 1], [0.5, 1]], "limit": 2.0, "extra": {"a": 1},
    }, "example")
    assert got == Example(3, 1.0, True, "32", (640, 640), (1.0, 2.0), ((0.0, 1.0), (0.5, 1.0)), 2, {"a": 1})
    assert from_dict(Example, {"limit": None}, "example").limit is None


@pytest.mark.parametrize(("key", "value", "message"), [
    ("count", 1.5, "example.count: 1.5 is not a valid int"),
    ("count", True, "example.count: True is not a valid int"),
    ("flag", "maybe", "example.flag: 'maybe' is not a valid bool"),
    ("name", [1], "example.name: [1] is not a valid str"),
    ("size", [1, 2, 3], "example.size: [1, 2, 3] is not a valid tuple[int, int] (write a list"),
    ("values", "1, 2", "example.values: '1, 2' is not a valid tuple[float, ...]"),
    ("windows", [[0, 1, 2]], "example.windows: [[0, 1, 2]] is not a valid tuple[tuple[float, float], ...]"),
])
def test_a_value_of_the_wrong_kind_names_its_key_and_type(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(Example, {key: value}, "example")
    assert str(info.value).startswith(message)


def test_an_unknown_key_suggests_the_closest_field() -> None:
    with pytest.raises(ConfigError, match="example: unknown key 'cont'; did you mean 'count'"):
        from_dict(Example, {"cont": 1}, "example")
    with pytest.raises(ConfigError, match="config: unknown section 'trian'; did you mean 'train'"):
        ExperimentConfig.from_dict({"trian": {}})


def test_the_shipped_configs_coerce_as_before() -> None:
    assert tiny_config(img_size=32).img_size == (32, 32)
    cfg = load_experiment(SYNTHETIC, ["train.devices=2", "train.anneal_windows=[[0,1],[0,1]]", "train.precision=32"])
    assert cfg.train.devices == "2" and cfg.train.precision == "32"
    assert cfg.train.anneal_windows == ((0.0, 1.0), (0.0, 1.0))
    assert ExperimentConfig.from_dict(cfg.to_dict()) == ExperimentConfig.from_dict(cfg.to_dict())
    assert cfg.to_dict()["data"]["options"] == {"size": 128, "train_num_images": 4000, "val_num_images": 100}


def test_the_old_score_threshold_key_is_read_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="eomt.config"):
        cfg = load_experiment(SYNTHETIC, ["train.mask_threshold=0.6"])
    assert cfg.train.score_threshold == 0.6
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "train.mask_threshold" in warnings[0] and "train.score_threshold" in warnings[0]
    assert "mask_threshold" not in cfg.to_dict()["train"]
    # A saved run's config (a checkpoint's hyper-parameters) keeps loading, without a warning.
    caplog.clear()
    saved = cfg.to_dict()
    saved["train"]["mask_threshold"] = saved["train"].pop("score_threshold")
    assert ExperimentConfig.from_dict(saved).train.score_threshold == 0.6
    assert not caplog.records
    with pytest.raises(ConfigError, match="train.mask_threshold: renamed to train.score_threshold"):
        load_experiment(SYNTHETIC, ["train.mask_threshold=0.6", "train.score_threshold=0.7"])


def test_the_loss_weights_have_one_name_in_config_loss_and_matcher() -> None:
    import inspect

    from eomt.training.losses import MaskClassificationLoss
    from eomt.training.matcher import hungarian_match, matching_cost

    weights = {"class_weight", "mask_weight", "dice_weight"}
    assert weights <= set(TrainConfig.__dataclass_fields__)
    assert weights | {"no_object_weight"} <= set(inspect.signature(MaskClassificationLoss).parameters)
    for fn in (matching_cost, hungarian_match):
        assert weights <= set(inspect.signature(fn).parameters)
