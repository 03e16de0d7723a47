import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from eomt.data.base import resize_nearest, target_from_ids, target_from_label_map
from eomt.data.sources import DatasetError, FolderSource, ZipSource, natural_key

try:
    from .fixtures import encode, rgb, write_zip, zip_bytes
except ImportError:
    from fixtures import encode, rgb, write_zip, zip_bytes


@pytest.fixture
def archive(tmp_path):
    rng = np.random.default_rng(0)
    image, label = rgb(rng), rng.integers(0, 300, (5, 7)).astype(np.uint16)
    inner = zip_bytes({"masks/a.png": encode(label)})
    path = write_zip(tmp_path / "data.zip", {
        "imgs/img10.png": encode(image), "imgs/img2.png": encode(image), "imgs/x.txt": b"",
        "imgs/sub/img1.PNG": encode(image), "other/img0.png": b"", "nested.zip": inner,
    })
    return path, image, label


def test_list_filters_folder_and_suffix_and_sorts_by_first_integer(archive):
    src = ZipSource(archive[0])
    assert src.list("./imgs/", ".png") == ["imgs/sub/img1.PNG", "imgs/img2.png", "imgs/img10.png"]
    assert src.list("", ".png")[0] == "other/img0.png"
    assert sorted(["b", "a7", "a10", "z1"], key=natural_key) == ["z1", "a7", "a10", "b"]


def test_reads_image_and_raw_png_values(archive):
    path, image, label = archive
    src = ZipSource(path)
    np.testing.assert_array_equal(src.read_image("imgs/img2.png"), image)
    png = src.read_png("imgs/img2.png")
    assert png.shape == image.shape
    nested = ZipSource(path, inner="nested.zip")
    out = nested.read_png("masks/a.png")
    assert out.dtype == np.uint16 or out.dtype == np.int32
    np.testing.assert_array_equal(out, label)


def test_palette_png_reads_indices_not_colours(tmp_path):
    idx = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    img.save(tmp_path / "p.png")
    np.testing.assert_array_equal(FolderSource(tmp_path).read_png("p.png"), idx)


def test_exif_orientation_applied(tmp_path):
    image = np.zeros((4, 6, 3), np.uint8)
    image[0, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    Image.fromarray(image).save(tmp_path / "r.jpg", exif=exif, quality=100)
    src = FolderSource(tmp_path)
    out = src.read_image("r.jpg")
    assert out.shape == (6, 4, 3) and src.image_size("r.jpg") == (6, 4)
    assert out[0, -1].mean() > 128  # the top-left pixel went to the top-right


def test_errors_name_archive_and_member(archive, tmp_path):
    path, _, _ = archive
    src = ZipSource(path)
    with pytest.raises(DatasetError, match=r"data\.zip: imgs/missing\.png"):
        src.read_image("imgs/missing.png")
    with pytest.raises(DatasetError, match=r"data\.zip: other/img0\.png: unreadable image"):
        src.read_image("other/img0.png")
    with pytest.raises(DatasetError, match=r"nested\.zip.*masks/b\.png"):
        ZipSource(path, inner="nested.zip").read_png("masks/b.png")
    with pytest.raises(DatasetError, match="absent.zip: archive not found"):
        ZipSource(tmp_path / "absent.zip")
    with pytest.raises(DatasetError, match="no_such.zip not found"):
        ZipSource(path, inner="no_such.zip")
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="bad.zip: not a valid zip"):
        ZipSource(tmp_path / "bad.zip")


def test_truncated_image_is_an_error(tmp_path):
    data = encode(rgb(np.random.default_rng(0), 32, 32), "JPEG")
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="t.jpg: unreadable image"):
        FolderSource(tmp_path).read_image("t.jpg")


def test_handle_dropped_on_pickle_and_reopened_per_process(archive):
    path, image, _ = archive
    src = ZipSource(path, inner="nested.zip")
    assert src._handle is None  # the inner zip's bytes are not held after listing
    src.read_png("masks/a.png")
    assert src._handle is not None
    clone = pickle.loads(pickle.dumps(src))
    assert clone._handle is None
    np.testing.assert_array_equal(clone.read_png("masks/a.png"), src.read_png("masks/a.png"))
    src._pid = -1  # as seen from a forked worker: the cached handle belongs to another process
    old = src._handle
    src.read_png("masks/a.png")
    assert src._handle is not old and src._pid == os.getpid()


class _ZipImages(torch.utils.data.Dataset):
    def __init__(self, src):
        self.src = src

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.from_numpy(self.src.read_image("imgs/img10.png").copy())


def test_dataloader_workers_read_the_archive(archive):
    path, image, _ = archive
    src = ZipSource(path)
    src.read_image("imgs/img2.png")  # a handle opened in the parent must not be shared
    loader = torch.utils.data.DataLoader(_ZipImages(src), batch_size=2, num_workers=2)
    for batch in loader:
        np.testing.assert_array_equal(batch[0].numpy(), image)


def test_target_helpers():
    ids = np.array([[5, 5, 0], [7, 9, 9]])
    t = target_from_ids(ids, np.array([9, 5, 8]), np.array([1, 2, 3]), np.array([True, False, False]))
    assert t.labels.tolist() == [1, 2]  # id 8 is absent from the map: dropped
    assert t.is_crowd.tolist() == [True, False]
    assert t.masks.dtype == torch.bool and t.masks.shape == (2, 2, 3)
    assert torch.equal(t.masks[0], torch.from_numpy(ids == 9))
    sem = target_from_label_map(np.array([[-1, 3], [0, 3]]))
    assert sem.labels.tolist() == [0, 3] and int(sem.masks.sum()) == 3
    up = resize_nearest(np.array([[1, 2], [3, 4]]), (4, 4))
    ref = torch.nn.functional.interpolate(torch.tensor([[[[1.0, 2], [3, 4]]]]), size=(4, 4), mode="nearest")
    np.testing.assert_array_equal(up, ref[0, 0].numpy())
    down = resize_nearest(np.arange(35).reshape(5, 7), (3, 2))
    ref = torch.nn.functional.interpolate(torch.arange(35.0).reshape(1, 1, 5, 7), size=(3, 2), mode="nearest")
    np.testing.assert_array_equal(down, ref[0, 0].numpy())


def test_folder_source_lists_recursively(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x3.jpg").write_bytes(b"")
    (tmp_path / "a" / "x20.JPG").write_bytes(b"")
    src = FolderSource(tmp_path)
    assert src.list("a", (".jpg",)) == ["a/b/x3.jpg", "a/x20.JPG"]
    assert src.exists("a/b/x3.jpg") and not src.exists("a/b")
    with pytest.raises(DatasetError, match="nope: folder not found"):
        FolderSource(tmp_path / "nope")
