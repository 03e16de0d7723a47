"""Small-data options: a frozen backbone, LR scaled with the total batch, warm-up as fractions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from eomt.checkpoints import load_model
from eomt.config import ConfigError, TrainConfig, load_experiment
from eomt.training import run as engine
from eomt.training.module import EoMTModule

from .test_engine import ROOT, TINY as ENGINE_TINY

TINY = [
    *ENGINE_TINY, "data.options={size: 64, train_num_images: 8, val_num_images: 2}",
    "train.checkpoint_every_n_steps=0", "train.max_steps=4", "train.data_check=false",
]


def test_freeze_backbone_trains_only_the_heads(tmp_path: Path) -> None:
    cfg = load_experiment(str(ROOT / "configs/synthetic/panoptic.yaml"),
                          [*TINY, "train.freeze_backbone=true", "train.warmup_fraction=[0,0]",
                           f"train.out_dir={tmp_path}"])
    torch.manual_seed(cfg.train.seed)
    before = engine.build_network(cfg).state_dict()  # the run seeds the same way before building
    engine.train(cfg, progress=False)
    after = load_model(tmp_path / "model.safetensors").state_dict()
    frozen = [k for k in before if k.startswith("backbone.")]
    trained = [k for k in before if not k.startswith("backbone.")]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in trained)


def test_lr_scaling_rules() -> None:
    assert TrainConfig(lr=1e-4).scaled_lr(4) == 1e-4
    assert TrainConfig(lr=1e-4, lr_scaling="linear").scaled_lr(4) == pytest.approx(2.5e-5)
    assert TrainConfig(lr=1e-4, lr_scaling="sqrt").scaled_lr(4) == pytest.approx(5e-5)
    assert TrainConfig(lr=1e-4, lr_scaling="sqrt", lr_reference_batch=8).scaled_lr(32) == pytest.approx(2e-4)
    with pytest.raises(ConfigError, match="train.lr_scaling"):
        TrainConfig(lr_scaling="quadratic")


def test_optimizer_uses_the_scaled_lr_and_fractional_warmup() -> None:
    cfg = load_experiment(str(ROOT / "configs/synthetic/panoptic.yaml"),
                          [*TINY, "train.lr_scaling=linear", "train.lr=1e-3", "train.warmup_fraction=[0.1,0.2]"])
    module = EoMTModule(cfg.to_dict())
    module.total_steps = 100
    conf = module.configure_optimizers()
    head = [g for g in conf["optimizer"].param_groups if not g.get("is_backbone")]
    assert max(g["initial_lr"] for g in head) == pytest.approx(1e-3 * 2 / 16)
    assert cfg.train.warmup(100) == (10, 20)
    scheduler = conf["lr_scheduler"]["scheduler"]
    factors = [f(10) for f in scheduler.lr_lambdas]
    assert math.isclose(max(factors), 1.0)  # the heads' warm-up ends at 10 % of the run


@pytest.mark.parametrize("name", ["coco_panoptic", "coco_instance", "semantic_folder"])
def test_custom_configs_have_a_small_data_schedule(name: str) -> None:
    cfg = load_experiment(str(ROOT / f"configs/custom/{name}.yaml"))
    assert cfg.labels_from_dataset  # no class keys: the label space is the dataset's
    total = 300 // cfg.data.batch_size * cfg.train.epochs  # a few hundred images
    heads, backbone = cfg.train.warmup(total)
    assert 0 < heads + backbone < total / 2
    assert cfg.train.precision == "bf16-mixed"
