"""The typed config travels through training: the data module gives the label space, the module
takes the `ExperimentConfig` and its step budget at construction."""

from __future__ import annotations

from pathlib import Path

from eomt.config import ExperimentConfig, LabelSpace
from eomt.training.data_module import EoMTDataModule
from eomt.training.module import EoMTModule
from eomt.training.run import with_dataset_labels

from .test_engine import TINY, tiny_config


def test_the_data_module_gives_the_label_space_the_config_resolves(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "model.class_names=[]", "model.stuff_classes=[]", "model.num_classes=[]",
                      "train.max_steps=-1", "train.epochs=3")
    assert cfg.labels_from_dataset
    data = EoMTDataModule(cfg.data, cfg.model, seed=0)
    data.setup("fit")
    labels = data.labels
    assert isinstance(labels, LabelSpace) and labels.num_classes == 6 and labels.stuff == (4, 5)
    resolved = with_dataset_labels(cfg, data.train_set)
    assert resolved.model.labels == labels
    assert data.steps_per_epoch() == 5 and cfg.train.total_steps(data.steps_per_epoch()) == 3 * 5


def test_the_module_takes_the_typed_config_and_its_step_budget(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "train.max_steps=7")
    module = EoMTModule(cfg, total_steps=cfg.train.total_steps(5))
    assert module.cfg is cfg and module.total_steps == 7
    # What the checkpoint stores is plain data, and it builds the same module.
    saved = module.hparams["config"]
    assert isinstance(saved, dict) and ExperimentConfig.from_dict(saved) == ExperimentConfig.from_dict(cfg.to_dict())
    assert EoMTModule(saved).cfg.train == cfg.train
    assert module.criterion.weights == {"loss_mask": 5.0, "loss_dice": 5.0, "loss_cross_entropy": 2.0}
    assert TINY  # the engine tests' tiny run
