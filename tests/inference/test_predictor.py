import numpy as np
import pytest
import torch
from PIL import Image

from eomt.config import tiny_config
from eomt.inference.predictor import Predictor
from eomt.models import EoMT
from eomt.structures import InstanceResult, PanopticResult, SemanticResult

RESULT_TYPES = {"panoptic": PanopticResult, "instance": InstanceResult, "semantic": SemanticResult}


def tiny_model(task: str = "panoptic") -> EoMT:
    torch.manual_seed(0)
    model = EoMT(tiny_config(task=task, stuff_classes=(3, 4)))
    model.set_attn_mask_probs([0.0, 0.0])  # a trained model: no random masking at inference
    return model


def _size(result) -> tuple[int, int]:
    if isinstance(result, PanopticResult):
        return tuple(result.segmentation.shape)
    if isinstance(result, SemanticResult):
        return tuple(result.labels.shape)
    return tuple(result.masks.shape[-2:])


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_odd_image_files_give_results_at_their_displayed_size(odd_images, task: str) -> None:
    predictor = Predictor(tiny_model(), task=task, batch_size=4)
    paths = [p for p, _ in odd_images.values()]
    results = predictor(paths)
    assert len(results) == len(paths)
    for (_, expected), result in zip(odd_images.values(), results):
        assert isinstance(result, RESULT_TYPES[task])
        assert _size(result) == expected.shape[:2]


def test_every_input_kind_gives_the_same_result(tmp_path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (37, 70, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    predictor = Predictor(tiny_model(), threshold=0.0)
    inputs = [str(path), path, Image.fromarray(rgb), rgb, torch.from_numpy(rgb).permute(2, 0, 1)]
    results = predictor(inputs)
    for r in results[1:]:
        assert torch.equal(r.segmentation, results[0].segmentation)
        assert r.segments == results[0].segments
    assert results[0].segments  # threshold 0: something is found
    single = predictor.predict_one(rgb)  # a single array is one image, not a list of rows
    assert torch.equal(single.segmentation, results[0].segmentation)
    # One image in, one result out; a list (or tuple) in, a list out.
    assert isinstance(predictor(rgb), PanopticResult) and isinstance(predictor(str(path)), PanopticResult)
    assert torch.equal(predictor(path).segmentation, results[0].segmentation)
    assert [type(r) for r in predictor((rgb,))] == [PanopticResult]


def test_batching_does_not_change_results() -> None:
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in [(30, 64), (64, 20), (50, 50)]]
    for task in ("instance", "semantic"):
        one = Predictor(tiny_model(), task=task, batch_size=1)(images)
        three = Predictor(tiny_model(), task=task, batch_size=3)(images)
        for a, b in zip(one, three):
            if task == "semantic":
                assert (a.labels == b.labels).float().mean() > 0.99
            else:
                torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=1e-4)


def test_semantic_single_crop_equals_the_per_pixel_rule() -> None:
    model = tiny_model("semantic")
    image = torch.rand(3, 64, 64)  # exactly one crop, no resize
    result = Predictor(model)(image)
    with torch.inference_mode():
        out = model(image[None])
    masks = torch.nn.functional.interpolate(out.mask_logits, size=(64, 64), mode="bilinear")
    scores = torch.einsum("bqhw,bqc->bchw", masks.sigmoid(), out.class_logits.softmax(-1)[..., :-1])
    assert torch.equal(result.labels, scores[0].argmax(0))


@pytest.mark.parametrize("h, w", [(1, 300), (300, 1), (5, 5), (129, 64)])
def test_extreme_aspect_ratios(h: int, w: int) -> None:
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    for task in ("panoptic", "instance"):
        assert _size(Predictor(tiny_model(), task=task, threshold=0.0)(image)) == (h, w)
    if min(h, w) > 1:  # semantic windows: the short side goes to 64, so 1 x 300 -> 300 crops
        assert _size(Predictor(tiny_model(), task="semantic")(image)) == (h, w)


def test_bf16_runs_on_cpu_with_bf16_weights_and_leaves_the_callers_model() -> None:
    model = tiny_model()
    seen = []
    model.class_head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    predictor = Predictor(model, dtype="bf16", task="instance")
    image = torch.rand(3, 40, 64)
    results = predictor([image])
    assert seen == [torch.bfloat16]
    assert results[0].scores.dtype == torch.float32 and results[0].masks.shape[-2:] == (40, 64)
    assert next(predictor.model.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # a copy was converted
    ref = Predictor(model, task="instance")([image])[0]
    # the best instance is the same query/class, with a mask that agrees on most pixels
    assert results[0].labels[0] == ref.labels[0]
    assert (results[0].masks[0] == ref.masks[0]).float().mean() > 0.95


def test_fp16_on_cpu_and_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="dtype: fp16 needs a CUDA device"):
        Predictor(tiny_model(), dtype="fp16")
    with pytest.raises(ValueError, match="dtype: unknown value 'fp8'"):
        Predictor(tiny_model(), dtype="fp8")
    with pytest.raises(ValueError, match="task: unknown value 'depth'"):
        Predictor(tiny_model(), task="depth")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Predictor(tiny_model(), device="cuda")


def test_task_and_thresholds_default_from_the_model() -> None:
    p = Predictor(tiny_model("instance"))
    assert p.task == "instance" and p.threshold == 0.0
    p = Predictor(tiny_model("instance"), task="panoptic")
    assert p.task == "panoptic" and p.threshold == 0.8
    assert not p.model.training


def test_compiled_predictor_matches_eager() -> None:
    torch._dynamo.reset()
    model = tiny_model("instance")
    images = [torch.rand(3, 40, 64), torch.rand(3, 64, 30)]  # two sizes, one padded input shape
    want = Predictor(model)(images)
    predictor = Predictor(model, compile=True)
    got = predictor(images)
    assert predictor._network is not predictor.model  # the compiled module ran
    for g, w in zip(got, want):
        assert torch.equal(g.labels, w.labels)
        torch.testing.assert_close(g.scores, w.scores, rtol=1e-4, atol=1e-5)
        assert (g.masks == w.masks).float().mean() > 0.999


def test_compile_refuses_an_exported_graph() -> None:
    class Exported:  # what load_exported returns: a fixed-size graph with a config
        input_shape = (1, 3, 64, 64)
        config = tiny_config()

        def to(self, device):
            return self

        def eval(self):
            return self

    with pytest.raises(ValueError, match="compile: only an EoMT network can be compiled"):
        Predictor(Exported(), compile=True)
