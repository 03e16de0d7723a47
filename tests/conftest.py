import os
from pathlib import Path

import pytest
import torch

# Tiny models run fastest on one thread (no OpenMP contention when processes share 2 cores).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# Steps of the briefly trained synthetic model below: enough that its predictions are objects and
# stuff regions (not noise), few enough to train in about a minute on 2 cores.
TRAINED_STEPS = 240


@pytest.fixture(scope="session")
def trained_synthetic_model(tmp_path_factory: pytest.TempPathFactory):
    """A tiny panoptic EoMT (the demo's config) trained briefly on the synthetic scenes, once per
    test session: (path of its model.safetensors, the val dataset of 100 held-out scenes).

    For tests that compare inference variants (token merging, int8) on a network whose outputs mean
    something; masked attention is annealed to zero within the steps, as in the demo."""
    from eomt.demo import demo_config
    from eomt.training.data_module import EoMTDataModule
    from eomt.training.run import train

    out = tmp_path_factory.mktemp("trained_synthetic")
    cfg = demo_config([f"train.max_steps={TRAINED_STEPS}", "train.warmup_steps=[20,40]",
                       "train.checkpoint_every_n_steps=0", "train.data_check=false",
                       "data.options.train_num_images=2000"], out_dir=str(out))
    threads = torch.get_num_threads()
    try:
        train(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    data = EoMTDataModule(cfg.data, cfg.model, seed=cfg.train.seed)
    data.setup("validate")
    return out / "model.safetensors", data.val_set


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A tiny panoptic EoMT file (5 classes "a".."e", stuff 3 and 4, masked attention off), random weights."""
    from eomt.checkpoints import save_model
    from eomt.config import tiny_config
    from eomt.models import EoMT

    model = EoMT(tiny_config(task="panoptic", stuff_classes=(3, 4), class_names=("a", "b", "c", "d", "e")))
    model.set_attn_mask_probs([0.0, 0.0])
    return save_model(model, tmp_path / "tiny.safetensors")
