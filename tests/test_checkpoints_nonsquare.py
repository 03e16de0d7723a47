"""Non-square models (img_size (64, 96): a 4 x 6 token grid) through every checkpoint layout.

Layouts without a config inside (official release, bare state dict) reload with `img_size=` the
training size (or `config=` / `preset=`); the position embedding is resampled from its stored
non-square grid when another size is asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eomt import EoMT
from eomt.checkpoints import CheckpointError, load_model, save_model, save_official, save_transformers
from eomt.checkpoints.official import sidecar_path
from eomt.checkpoints.hf import config_to_hf, to_hf
from eomt.config import preset, tiny_config
from eomt.models.backbones.dinov2 import resize_pos_embed

SIZE = (64, 96)


def _random(model: EoMT) -> EoMT:
    """Every tensor random, so a swapped, transposed or dropped tensor shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    model.set_attn_mask_probs([0.0] * model.config.num_blocks)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> EoMT:
    return _random(EoMT(tiny_config(img_size=SIZE)))


def _assert_same(a: EoMT, b: EoMT, outputs: bool = True) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    if outputs:
        x = torch.rand(1, 3, *SIZE)
        with torch.no_grad():
            oa, ob = a(x), b(x)
        assert torch.equal(oa.mask_logits, ob.mask_logits) and torch.equal(oa.class_logits, ob.class_logits)


@pytest.mark.parametrize("how", ["img_size", "config"])
def test_official_layout_reloads(model: EoMT, tmp_path: Path, how: str) -> None:
    path = save_official(model, tmp_path / "pytorch_model.bin")
    kwargs = {"img_size": SIZE} if how == "img_size" else {"config": model.config}
    loaded = EoMT.from_pretrained(path, **kwargs)
    assert tuple(loaded.config.img_size) == SIZE and loaded.backbone.grid_size == (4, 6)
    _assert_same(model, loaded)


def test_official_layout_with_a_preset(tmp_path: Path) -> None:
    cfg = preset("coco_panoptic_eomt_small_640").replace(img_size=(320, 480))  # 20 x 30 tokens
    model = EoMT(cfg)
    path = save_official(model, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pass img_size=\(H, W\)"):
        EoMT.from_pretrained(path, preset="coco_panoptic_eomt_small_640")  # the preset's 640 x 640
    loaded = EoMT.from_pretrained(path, preset="coco_panoptic_eomt_small_640", img_size=(320, 480))
    assert loaded.config == cfg
    _assert_same(model, loaded, outputs=False)  # the same code path as the tiny model's outputs


def test_official_layout_without_a_size_names_the_candidates(model: EoMT, tmp_path: Path) -> None:
    path = save_official(model, tmp_path / "pytorch_model.bin")
    sidecar_path(path).unlink()  # as an official release: tensors only, no config beside them
    with pytest.raises(CheckpointError, match=r"24 tokens, not a square grid.*img_size=\(H, W\).*\(64, 96\)") as e:
        load_model(path)
    assert str(path) in str(e.value)
    with pytest.raises(CheckpointError, match=r"nor the 8x8 grid of img_size=\(128, 128\).*\(64, 96\)"):
        load_model(path, img_size=(128, 128))  # another size: the stored grid is still unknown


def test_resample_from_a_non_square_grid(model: EoMT, tmp_path: Path) -> None:
    path = save_official(model, tmp_path / "pytorch_model.bin")
    loaded = load_model(path, config=model.config, img_size=(128, 128))  # config= names the stored size
    expected = resize_pos_embed(model.backbone.pos_embed.detach(), (4, 6), (8, 8))
    assert torch.equal(loaded.backbone.pos_embed.detach(), expected)
    native = save_model(model, tmp_path / "m.safetensors")  # the config inside names it
    assert torch.equal(load_model(native, img_size=(128, 128)).backbone.pos_embed.detach(), expected)


def test_bare_state_dict_round_trip(model: EoMT, tmp_path: Path) -> None:
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    _assert_same(model, load_model(tmp_path / "bare.pt", img_size=SIZE))


def test_own_format_round_trip(model: EoMT, tmp_path: Path) -> None:
    loaded = load_model(save_model(model, tmp_path / "m.safetensors"))
    assert loaded.config == model.config
    _assert_same(model, loaded)


def test_transformers_folder(model: EoMT, tmp_path: Path) -> None:
    # transformers' EoMT has one image_size for both sides: writing says so instead of a broken folder.
    with pytest.raises(CheckpointError, match=r"square size.*\(64, 96\).*save_model or save_official"):
        save_transformers(model, tmp_path / "hf")
    assert not (tmp_path / "hf" / "config.json").exists()
    # A folder whose config.json gives (H, W) (written by hand or another tool) is read exactly.
    folder = tmp_path / "hf_pair"
    folder.mkdir()
    config = config_to_hf(model.config.replace(img_size=(64, 64)))
    config["image_size"] = list(SIZE)
    (folder / "config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file

    save_file(to_hf(model.state_dict(), swiglu=False), folder / "model.safetensors")
    loaded = load_model(folder)
    assert tuple(loaded.config.img_size) == SIZE
    _assert_same(model, loaded)
