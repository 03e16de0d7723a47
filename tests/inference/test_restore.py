"""The way back to the image: restored logits, the reused buffers and the guarded upsampling kernel."""

import copy
import pickle
import threading

import pytest
import torch
import torch.nn.functional as F

from eomt.inference import restore
from eomt.inference.preprocess import scaled_size_longest
from eomt.structures import ImageMeta


@pytest.mark.parametrize("original", [(48, 64), (30, 64), (100, 37)])
def test_restore_logits_into_reused_buffers_equals_fresh_tensors(original: tuple[int, int]) -> None:
    # (48, 64): crop only; (30, 64) and (100, 37): crop and a second resize to the original size.
    logits = torch.randn(7, 16, 16)
    meta = ImageMeta(original, scaled_size_longest(*original, (64, 64)), (64, 64))
    workspace = restore.Workspace()
    fresh = restore.restore_logits(logits, meta)
    reused = restore.restore_logits(logits, meta, workspace)
    assert reused.shape == fresh.shape == (7, *original)
    assert torch.equal(reused, fresh)
    again = restore.restore_logits(logits * 2, meta, workspace)
    assert torch.equal(again, fresh * 2)  # the buffer is rewritten on the next call
    workspace.release()
    assert torch.equal(again, fresh * 2)  # a released buffer lives on in the tensors that use it
    assert torch.equal(restore.restore_logits(logits, meta, workspace), fresh)


def test_a_workspace_keeps_one_set_of_buffers_per_thread() -> None:
    workspace = restore.Workspace()
    like = torch.zeros(1)
    mine = workspace.buffer(0, (1, 3, 4, 5), like)
    assert mine.shape == (1, 3, 4, 5) and mine.is_contiguous(memory_format=torch.channels_last)
    assert workspace.buffer(0, (1, 3, 4, 5), like).data_ptr() == mine.data_ptr()  # reused
    other = []
    thread = threading.Thread(target=lambda: other.append(workspace.buffer(0, (1, 3, 4, 5), like)))
    thread.start()
    thread.join()
    assert other[0].data_ptr() != mine.data_ptr()  # another thread never rewrites this one
    assert restore.Workspace(limit=10).buffer(0, (1, 3, 4, 5), like) is None  # above the limit: fresh tensors
    copied = copy.deepcopy(workspace)  # a copied or pickled owner starts with buffers of its own
    assert copied.limit == workspace.limit and copied.buffer(0, (1, 3, 4, 5), like).data_ptr() != mine.data_ptr()
    assert pickle.loads(pickle.dumps(workspace)).limit == workspace.limit


def _broken_kernel(*args, **kwargs):
    raise TypeError("upsample_bilinear2d() got an unexpected keyword argument 'out'")


@pytest.mark.parametrize("kernel", ["private", "missing", "changed"])
@pytest.mark.parametrize("scales", [None, (4.0, 4.0)])
def test_upsampling_into_a_buffer_equals_interpolate_with_or_without_the_private_kernel(
    monkeypatch: pytest.MonkeyPatch, kernel: str, scales: tuple[float, float] | None
) -> None:
    if kernel == "missing":
        monkeypatch.setattr(restore, "_private_upsample", lambda: None)
    elif kernel == "changed":
        monkeypatch.setattr(restore, "_private_upsample", lambda: _broken_kernel)
    elif restore._private_upsample() is None:
        pytest.skip("this torch has no private upsampling kernel")
    x = torch.randn(1, 6, 9, 11).contiguous(memory_format=torch.channels_last)
    size = (36, 44)
    if scales is None:
        want = F.interpolate(x, size=size, mode="bilinear")
    else:
        want = F.interpolate(x, scale_factor=scales, mode="bilinear", recompute_scale_factor=False)
    out = restore.Workspace().buffer(0, (1, 6, *size), x)
    got = restore.upsample_bilinear(x, size, scales, out)
    assert torch.equal(got, want)
    if kernel == "private":
        assert got.data_ptr() == out.data_ptr()  # written in place


@pytest.mark.parametrize("kernel", ["missing", "changed"])
def test_restore_logits_without_the_private_kernel_gives_the_same_values(
    monkeypatch: pytest.MonkeyPatch, kernel: str
) -> None:
    logits = torch.randn(5, 16, 16)
    meta = ImageMeta((30, 64), scaled_size_longest(30, 64, (64, 64)), (64, 64))
    want = restore.restore_logits(logits, meta, restore.Workspace())
    monkeypatch.setattr(restore, "_private_upsample", (lambda: None) if kernel == "missing" else (lambda: _broken_kernel))
    assert torch.equal(restore.restore_logits(logits, meta, restore.Workspace()), want)
