"""Large images: the chunked post-processing equals the direct one; oversized files are refused."""

import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from eomt.inference import postprocess, restore
from eomt.inference.postprocess import instance_rule, panoptic_rule
from eomt.inference.io import DEFAULT_MAX_PIXELS, ImageTooLargeError, read_image
from eomt.inference.predictor import Predictor
from eomt.inference.preprocess import scaled_size_longest, scaled_size_shortest
from eomt.structures import ImageMeta, Windows


@pytest.fixture
def chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every image counts as large; the segment merging goes in several blocks."""
    monkeypatch.setattr(restore, "_DIRECT_BYTES", 0)
    monkeypatch.setattr(panoptic_rule, "_MERGE_BLOCK", 1000)


def _outputs(seed: int, q: int = 10, classes: int = 6, n: int = 1, smooth: bool = True) -> tuple:
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, q, 8, 8, generator=g)
    if smooth:  # blob-like masks, as a trained model gives
        low = torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear") * 6
    else:
        low = torch.randn(n, q, 32, 32, generator=g) * 3
    cls = torch.randn(n, q, classes + 1, generator=g) * 3
    cls[..., -1] = -10.0  # every query is a real class
    return low, cls


@pytest.mark.parametrize("smooth", [True, False])
def test_chunked_panoptic_equals_direct(chunked: None, monkeypatch: pytest.MonkeyPatch, smooth: bool) -> None:
    low, cls = _outputs(0, smooth=smooth)
    meta = ImageMeta((150, 230), scaled_size_longest(150, 230, 128), (128, 128))
    got = postprocess.panoptic(low, cls, [meta], stuff_classes=(0, 1), threshold=0.0, overlap_threshold=0.3)[0]
    monkeypatch.setattr(restore, "_DIRECT_BYTES", 1 << 40)
    monkeypatch.setattr(panoptic_rule, "_MERGE_BLOCK", 1 << 20)
    want = postprocess.panoptic(low, cls, [meta], stuff_classes=(0, 1), threshold=0.0, overlap_threshold=0.3)[0]
    assert len(want.segments) >= 2
    assert torch.equal(got.segmentation, want.segmentation)
    assert got.segments == want.segments


def test_chunked_instance_equals_direct(chunked: None, monkeypatch: pytest.MonkeyPatch) -> None:
    low, cls = _outputs(1)
    meta = ImageMeta((150, 230), scaled_size_longest(150, 230, 128), (128, 128))
    for top_k in (10, 25):  # the queries in order, and queries with several classes
        got = postprocess.instance(low, cls, [meta], top_k=top_k)[0]
        with monkeypatch.context() as m:
            m.setattr(restore, "_DIRECT_BYTES", 1 << 40)
            want = postprocess.instance(low, cls, [meta], top_k=top_k)[0]
        assert torch.equal(got.masks, want.masks) and torch.equal(got.labels, want.labels)
        torch.testing.assert_close(got.scores, want.scores, rtol=1e-6, atol=1e-7)


def test_chunked_semantic_equals_direct(chunked: None, monkeypatch: pytest.MonkeyPatch) -> None:
    low, cls = _outputs(2, n=2)
    h, w = 150, 230
    nh, nw = scaled_size_shortest(h, w, 128)
    windows = Windows([(0, 0, 128), (0, nw - 128, nw)], [ImageMeta((h, w), (nh, nw), (128, 128))])
    got = postprocess.semantic(low, cls, windows)[0]
    want = postprocess.semantic(low, cls, windows, return_scores=True)[0]  # the direct path
    assert len(want.labels.unique()) > 1
    assert torch.equal(got.labels, want.labels) and got.scores is None


def test_restoring_queries_one_by_one_gives_the_same_values() -> None:
    low = torch.randn(7, 32, 32)
    meta = ImageMeta((150, 230), scaled_size_longest(150, 230, 128), (128, 128))
    whole = restore.restore_logits(low, meta, channels_last=False)
    parts = torch.stack([x.view(150, 230) for _, x in restore.restored_one_by_one(low, meta)])
    assert torch.equal(whole, parts)


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG that announces width x height RGB pixels and holds one compressed row: a bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * width))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_an_image_above_the_pixel_limit_is_refused_before_decoding(tmp_path) -> None:
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 40000, 30000)  # 1.2 G pixels announced in a few hundred bytes
    assert bomb.stat().st_size < 1000 and 40000 * 30000 > DEFAULT_MAX_PIXELS
    announced = r"bomb\.png: 40000 x 30000 = 1,200,000,000 pixels .*limit of 178,956,970"
    with pytest.raises(ImageTooLargeError, match=announced):
        read_image(bomb)
    with pytest.raises(ImageTooLargeError, match="bomb.png"):
        Predictor(_tiny(), max_pixels=10**9)([bomb])  # the caller's limit is the one that counts
    assert Image.MAX_IMAGE_PIXELS == 89478485  # Pillow's own limit is left as it was


def test_the_pixel_limit_can_be_lowered_and_raised(tmp_path) -> None:
    path = tmp_path / "photo.png"
    Image.fromarray(np.full((80, 100, 3), 120, np.uint8)).save(path)
    with pytest.raises(ImageTooLargeError, match=r"100 x 80 = 8,000 pixels is more than the limit of 7,999"):
        read_image(path, max_pixels=7999)
    assert read_image(path, max_pixels=8000).shape == (3, 80, 100)
    assert read_image(path, max_pixels=None).shape == (3, 80, 100)
    big = tmp_path / "big.png"
    _png_header_only(big, 20000, 10000)  # above both of Pillow's limits: ours decides, silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLargeError, match="limit of 100,000,000"):
            read_image(big, max_pixels=10**8)


def _tiny():
    from eomt.config import tiny_config
    from eomt.models import EoMT

    torch.manual_seed(0)
    return EoMT(tiny_config())


def test_result_files_and_overlays_made_in_pieces_equal_the_whole_image_formulas(monkeypatch) -> None:
    from pycocotools import mask as mask_utils

    from eomt.inference import formats, visualize
    from eomt.structures import InstanceResult

    g = torch.Generator().manual_seed(3)
    seg = torch.randint(0, 6, (70, 50), generator=g)
    seg[seg == 4] = 0
    seg[0, 0] = 300000  # an id above 16 bits
    rgb = formats.id_to_rgb(seg)
    s = seg.numpy().astype(np.int64)
    assert np.array_equal(rgb, np.stack([s % 256, s // 256 % 256, s // 256**2 % 256], -1).astype(np.uint8))
    seg[0, 0] = 5
    monkeypatch.setattr(visualize, "_BAND_PIXELS", 50 * 7)  # 7 rows a band
    boxes = formats.segment_boxes(seg, 5).tolist()
    for i in range(1, 6):
        ys, xs = (seg == i).nonzero(as_tuple=True)
        if len(ys):
            want = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            assert boxes[i - 1] == want
        else:  # an id that does not occur: an empty box
            assert boxes[i - 1][2:] == [0, 0]

    masks = torch.rand(4, 70, 50, generator=g) > 0.6
    result = InstanceResult(masks, torch.tensor([0, 1, 1, 2]), torch.tensor([0.9, 0.3, 0.95, 0.6]))
    want = mask_utils.encode(np.asfortranarray(masks.numpy().astype(np.uint8).transpose(1, 2, 0)))
    got = formats.instances_to_coco(result, 1)
    assert [e["segmentation"]["counts"] for e in got] == [r["counts"].decode("ascii") for r in want]

    image = torch.randint(0, 256, (3, 70, 50), dtype=torch.uint8, generator=g)
    picture = np.asarray(visualize.overlay_instances(image, result, threshold=0.5))[:70, :50]
    order = [2, 0, 3]  # best first among those >= 0.5
    ids = torch.zeros(70, 50, dtype=torch.long)
    for rank in reversed(range(3)):
        ids[masks[order[rank]]] = rank + 1
    colors = np.zeros((4, 3), np.uint8)
    colors[1:] = visualize.instance_colors(result.labels[order])
    base = image.permute(1, 2, 0).numpy().astype(np.float32)
    blend = np.where((ids.numpy() > 0)[..., None], 0.45 * base + 0.55 * colors[ids.numpy()].astype(np.float32), base)
    blend = np.round(blend).astype(np.uint8)
    blend[visualize.boundaries(ids, visualize.outline_width(70, 50)).numpy()] = 255
    assert np.array_equal(picture, blend)


def test_gathering_rows_in_place_equals_indexing() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        rows = int(torch.randint(1, 12, (1,), generator=g))
        used = int(torch.randint(1, rows + 1, (1,), generator=g))  # the first rows hold sources
        src = torch.randint(0, used, (int(torch.randint(0, rows + 1, (1,), generator=g)),), generator=g)
        buf = torch.randn(rows, 3, generator=g)
        want = buf[src].clone()
        assert torch.equal(instance_rule._gather_rows_in_place(buf, src), want)


def test_eomt_predict_skips_a_bomb_by_name_and_takes_the_limit_option(tmp_path, capsys) -> None:
    from eomt import save_model
    from eomt.cli import main

    model = save_model(_tiny(), tmp_path / "model.safetensors")
    images = tmp_path / "images"
    images.mkdir()
    _png_header_only(images / "bomb.png", 40000, 30000)
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(images / "small.png")
    code = main(["predict", str(images), "--model", str(model), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and (tmp_path / "out" / "small_overlay.png").is_file()
    line = next(x for x in err.splitlines() if "bomb.png" in x and "skipped" in x)
    assert "40000 x 30000 = 1,200,000,000 pixels is more than the limit of 178,956,970" in line
    code = main(["predict", str(images / "small.png"), "--model", str(model), "--out", str(tmp_path / "o2"),
                 "--max-pixels", "2000"])
    assert code == 1 and "limit of 2,000" in capsys.readouterr().err


def test_rle_masks_read_like_the_dense_stack() -> None:
    from pycocotools import mask as mask_utils

    from eomt.structures import RLEMasks

    g = torch.Generator().manual_seed(5)
    dense = torch.rand(5, 37, 23, generator=g) > 0.5
    dense[1] = False  # an empty mask
    masks = RLEMasks.encode(dense)
    want = mask_utils.encode(np.asfortranarray(dense.numpy().astype(np.uint8).transpose(1, 2, 0)))
    assert [r["counts"] for r in masks.rles] == [r["counts"] for r in want]  # pycocotools' own encoding
    assert masks.shape == dense.shape and len(masks) == 5 and masks.dim() == 3
    assert torch.equal(masks.to_dense(), dense)
    assert all(torch.equal(m, d) for m, d in zip(masks, dense))
    assert torch.equal(masks[3], dense[3]) and torch.equal(masks[torch.tensor(2)], dense[2])
    assert masks[3].dtype == torch.bool and masks[3].is_contiguous()
    assert torch.equal(masks[1:4].to_dense(), dense[1:4])
    assert torch.equal(masks[torch.tensor([4, 0, 4])].to_dense(), dense[[4, 0, 4]])
    assert torch.equal(masks[torch.tensor([True, False, True, False, False])].to_dense(), dense[[0, 2]])
    assert torch.equal(masks.area(), dense.flatten(1).sum(1))
    assert RLEMasks([], (4, 6)).to_dense().shape == (0, 4, 6) and RLEMasks([], (4, 6)).area().numel() == 0
    with pytest.raises(ValueError, match=r"mask 0 has size \[37, 23\], expected \[23, 37\]"):
        RLEMasks(masks.rles, (23, 37))


@pytest.mark.parametrize("top_k", [10, 25])
def test_rle_instance_masks_equal_the_dense_ones(monkeypatch: pytest.MonkeyPatch, top_k: int) -> None:
    from eomt.structures import RLEMasks

    low, cls = _outputs(1)
    meta = ImageMeta((150, 230), scaled_size_longest(150, 230, 128), (128, 128))
    want = postprocess.instance(low, cls, [meta], top_k=top_k, mask_format="dense")[0]
    got = postprocess.instance(low, cls, [meta], top_k=top_k, mask_format="rle")[0]
    assert isinstance(got.masks, RLEMasks) and isinstance(want.masks, torch.Tensor)
    assert torch.equal(got.masks.to_dense(), want.masks) and torch.equal(got.labels, want.labels)
    torch.testing.assert_close(got.scores, want.scores, rtol=1e-6, atol=1e-7)
    assert isinstance(postprocess.instance(low, cls, [meta], top_k=top_k)[0].masks, torch.Tensor)
    monkeypatch.setattr(instance_rule, "DENSE_MASK_BYTES", top_k * 150 * 230 - 1)  # auto: just too large
    auto = postprocess.instance(low, cls, [meta], top_k=top_k)[0]
    assert isinstance(auto.masks, RLEMasks) and auto.masks.rles == got.masks.rles
    with pytest.raises(ValueError, match="mask_format: unknown value 'png'"):
        postprocess.instance(low, cls, [meta], mask_format="png")


def test_results_overlays_and_ap_of_rle_masks_equal_those_of_dense_masks() -> None:
    from eomt.evaluation.instance import InstanceEvaluator
    from eomt.inference import formats, visualize
    from eomt.structures import InstanceResult, RLEMasks, Target

    g = torch.Generator().manual_seed(8)
    masks = torch.rand(4, 40, 30, generator=g) > 0.6
    labels, scores = torch.tensor([0, 1, 1, 2]), torch.tensor([0.9, 0.3, 0.95, 0.6])
    dense = InstanceResult(masks, labels, scores)
    rle = InstanceResult(RLEMasks.encode(masks), labels, scores)
    assert formats.instances_to_coco(rle, 3) == formats.instances_to_coco(dense, 3)
    image = torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8, generator=g)
    assert np.array_equal(np.asarray(visualize.overlay_instances(image, rle)),
                          np.asarray(visualize.overlay_instances(image, dense)))
    target = Target(masks[[0, 2]] | masks[[1, 3]], torch.tensor([0, 1]), torch.tensor([False, False]))
    results = []
    for pred in (dense, rle):
        evaluator = InstanceEvaluator(num_classes=3)
        evaluator.update([pred], [target])
        results.append(evaluator.compute())
    assert results[0] == results[1]


def test_predictor_gives_rle_masks_when_asked_and_checks_the_option() -> None:
    from eomt.structures import RLEMasks

    image = torch.randint(0, 256, (3, 90, 70), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model = _tiny()
    dense = Predictor(model, task="instance", mask_format="dense", top_k=7).predict_one(image)
    rle = Predictor(model, task="instance", mask_format="rle", top_k=7).predict_one(image)
    assert isinstance(rle.masks, RLEMasks) and rle.masks.shape == dense.masks.shape == (7, 90, 70)
    assert torch.equal(rle.masks.to_dense(), dense.masks) and torch.equal(rle.labels, dense.labels)
    torch.testing.assert_close(rle.scores, dense.scores, rtol=1e-6, atol=1e-7)  # sums in another order
    with pytest.raises(ValueError, match="mask_format: unknown value 'sparse'"):
        Predictor(model, task="instance", mask_format="sparse")
