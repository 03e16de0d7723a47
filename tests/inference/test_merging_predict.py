"""Token merging through Predictor, `eomt predict --merge-tokens` and export, and its accuracy on a
trained model."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from eomt.checkpoints import load_model, save_model
from eomt.cli import main
from eomt.config import tiny_config
from eomt.errors import OptionError
from eomt.export import ExportError, export_model
from eomt.inference.predictor import Predictor
from eomt.models import EoMT
from eomt.models.merging import TokenMerging

# PQ and mIoU (points) of the briefly trained model with merging at the default tau may differ from
# without by at most this much on 40 held-out scenes (measured: see the assertion message).
ACCURACY_BOUND = 1.5


def _model() -> EoMT:
    model = EoMT(tiny_config(task="panoptic", stuff_classes=(3, 4))).eval()
    model.set_attn_mask_probs([0.0] * model.config.num_blocks)
    return model


def _image() -> torch.Tensor:
    image = torch.full((3, 80, 64), 120, dtype=torch.uint8)  # a uniform half and a noisy half
    image[:, 40:] = torch.randint(0, 256, (3, 40, 64), dtype=torch.uint8)
    return image


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_every_task_predicts_with_merging_and_equals_plain_when_nothing_merges(task: str) -> None:
    model, image = _model(), _image()
    plain = Predictor(model, task=task)(image)
    merged = Predictor(model, task=task, token_merging=True)(image)
    none = Predictor(model, task=task, token_merging=1.01)(image)
    assert model.token_merging is None  # the caller's network keeps its setting
    field = {"panoptic": "segmentation", "instance": "masks", "semantic": "labels"}[task]
    ref = getattr(plain, field)
    assert getattr(merged, field).shape[-2:] == ref.shape[-2:] == (80, 64)
    assert torch.equal(getattr(none, field), ref)
    assert torch.equal(getattr(none, "labels", ref), getattr(plain, "labels", ref))


def test_bf16_predictor_merges() -> None:
    model = _model()
    out = Predictor(model, dtype="bf16", token_merging=TokenMerging(threshold=0.5))(_image())
    assert out.segmentation.shape == (80, 64)


def test_bad_settings_and_exported_graphs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="token_merging: expected None, a bool"):
        Predictor(_model(), token_merging="yes")  # type: ignore[arg-type]
    unannealed = EoMT(tiny_config())
    with pytest.raises(OptionError, match="masked attention"):
        Predictor(unannealed, token_merging=True)
    model = _model()
    model.token_merging = TokenMerging()
    with pytest.raises(ExportError, match="token_merging set; .*static graph"):
        export_model(model, tmp_path / "net.pt2", format="exported-program")


def test_predict_cli_merge_tokens_flag(tmp_path: Path) -> None:
    ckpt = save_model(_model(), tmp_path / "tiny.safetensors")
    Image.fromarray(_image().permute(1, 2, 0).numpy()).save(tmp_path / "a.png")
    for flag, out in [([], "plain"), (["--merge-tokens"], "merged"), (["--merge-tokens", "1.01"], "none")]:
        assert main(["predict", str(tmp_path / "a.png"), "--model", str(ckpt), "--out", str(tmp_path / out), *flag]) == 0
    png = {name: np.asarray(Image.open(tmp_path / name / "a_panoptic.png")) for name in ("plain", "merged", "none")}
    assert png["merged"].shape == png["plain"].shape
    assert np.array_equal(png["none"], png["plain"])


def test_merging_keeps_the_accuracy_of_a_trained_model(trained_synthetic_model: tuple[Path, object]) -> None:
    from eomt.demo import evaluate_all_tasks

    path, val_set = trained_synthetic_model
    model = load_model(path).eval()
    scenes = Subset(val_set, range(40))
    plain = evaluate_all_tasks(model, scenes)
    model.token_merging = TokenMerging()
    merged = evaluate_all_tasks(model, scenes)
    diffs = {k: abs(merged[k] - plain[k]) for k in ("pq", "miou")}
    assert all(d <= ACCURACY_BOUND for d in diffs.values()), f"plain {plain}, merged {merged}"


def test_bench_adds_a_merged_row_after_each_plain_one(tmp_path: Path) -> None:
    import json

    ckpt = save_model(_model(), tmp_path / "tiny.safetensors")
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", str(ckpt), "--merge-tokens", "--iters", "1", "--warmup", "0", "--json", str(out)]
    assert main(argv) == 0
    plain, merged = json.loads(out.read_text())["rows"]
    assert "merge_tokens" not in plain and merged["merge_tokens"] == 0.88 and "network" in merged
    assert merged["gmacs_per_image"] < plain["gmacs_per_image"]  # street-like images merge
