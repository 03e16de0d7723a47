"""Per-clip Hungarian matching for VidEoMT: each query is matched to one object track for the whole clip.

Facts of the official code (tue-mps/videomt `modeling/matcher.py`, `VideoHungarianMatcher_Consistent`,
the matcher of its `videomt_online` training):
- the targets of a clip are its tracks (an object present in at least one of the T frames): a
  label and T masks, empty on the frames where the object is absent;
- the cost of (query, track) is the image cost (5 BCE + 2 class + 5 dice at 12544 points shared by
  the predictions and targets of a frame, `eomt.training.matcher.matching_cost`) on ONE frame: the
  first frame where the track appears. Frames are solved in order of appearance; a query taken by
  an earlier frame's tracks is not available to a later one (its cost row is set to 1e6);
- the assignment holds for every frame of the clip (query k predicts its track on all T frames).

`rule="clip"` is an alternative (not the official one): the cost averaged over the frames where the
track is present, one solve per clip. Costs are batched over all frames of all clips in one call;
the solves (at most T small ones per clip) are the only per-clip step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from eomt.structures import Target
from eomt.training.matcher import BatchTargets, matching_cost
from eomt.training.points import Generators, uniform_points

RULES = ("first_appearance", "clip")
_TAKEN = 1e6  # the official cost of a query already matched at an earlier frame


@dataclass(frozen=True)
class ClipTargets:
    """The tracks of a batch of clips of T frames, and the same targets per frame.

    labels (N,) int64 and present (N, T) bool, concatenated over clips; counts: tracks per clip;
    frames: a `BatchTargets` over the B*T frames (frame b*T + t holds every track of clip b, in the
    same order, with its frame-t mask, empty where absent), what the image matcher and losses read.
    """

    labels: Tensor
    present: Tensor
    counts: tuple[int, ...]
    frames: BatchTargets

    @property
    def num_frames(self) -> int:
        """T, the frames per clip."""
        return int(self.present.shape[1])


def tracks_from_frames(frames: Sequence[Target], track_ids: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """One clip's per-frame targets -> its tracks: masks (N, T, H, W) bool and labels (N,) int64.

    frames[t]: the `Target` of frame t; track_ids[t]: (N_t,) the track id of each of its segments.
    Tracks are ordered by id; a track's label is its label in the first frame it appears in.
    Raises ValueError when the lengths disagree.
    """
    if len(frames) != len(track_ids) or not frames:
        raise ValueError(f"tracks_from_frames: {len(frames)} frames, {len(track_ids)} track id lists; expected equal, >= 1")
    ids = torch.cat([torch.as_tensor(i, dtype=torch.int64).reshape(-1) for i in track_ids])
    unique = torch.unique(ids)  # (N,) sorted
    h, w = frames[0].masks.shape[-2:]
    masks = torch.zeros(len(unique), len(frames), h, w, dtype=torch.bool)
    labels = torch.full((len(unique),), -1, dtype=torch.int64)
    for t in reversed(range(len(frames))):  # reversed: the first appearance writes the label last
        frame_ids = torch.as_tensor(track_ids[t], dtype=torch.int64).reshape(-1)
        if frame_ids.numel() != frames[t].labels.numel():
            raise ValueError(f"frame {t}: {frame_ids.numel()} track ids for {frames[t].labels.numel()} segments")
        rows = torch.searchsorted(unique, frame_ids)  # (N_t,)
        masks[rows, t] = frames[t].masks.bool()
        labels[rows] = frames[t].labels.long()
    return masks, labels


def stack_clip_targets(tracks: Sequence[tuple[Tensor, Tensor]], dtype: torch.dtype = torch.float32) -> ClipTargets:
    """Tracks of each clip (masks (N, T, H, W), labels (N,)) -> `ClipTargets`.

    Every clip must have the same T and frame size; a track with no mask pixel on any frame is
    dropped (the official `prepare_targets` keeps only tracks present in the clip).
    """
    if not tracks:
        raise ValueError("targets: expected at least one clip, got an empty list")
    shapes = {tuple(m.shape[1:]) for m, _ in tracks}
    if len(shapes) != 1 or any(m.dim() != 4 or m.shape[0] != lab.shape[0] for m, lab in tracks):
        raise ValueError(f"targets: expected per clip masks (N, T, H, W) of one T, H, W and labels (N,); got "
                         f"{[(tuple(m.shape), tuple(lab.shape)) for m, lab in tracks]}")
    kept = [(m[m.flatten(2).any(-1).any(-1)], lab[m.flatten(2).any(-1).any(-1)]) for m, lab in tracks]
    t = kept[0][0].shape[1]
    counts = tuple(int(lab.shape[0]) for _, lab in kept)
    # Frame b*T + t holds clip b's tracks at frame t: (T, N_b, H, W) per clip, flattened in order.
    masks = torch.cat([m.to(dtype).transpose(0, 1).flatten(0, 1) for m, _ in kept])  # (sum T*N_b, H, W)
    labels = torch.cat([lab.long() for _, lab in kept])  # (N,)
    frame_labels = torch.cat([lab.long().repeat(t) for _, lab in kept])  # (sum T*N_b,)
    frame_counts = tuple(n for n in counts for _ in range(t))
    image = torch.repeat_interleave(torch.arange(len(frame_counts)), torch.tensor(frame_counts, dtype=torch.int64))
    present = torch.cat([m.flatten(2).any(-1) for m, _ in kept])  # (N, T)
    return ClipTargets(labels, present, counts, BatchTargets(masks, frame_labels, image.to(labels.device), frame_counts))


@torch.no_grad()
def video_hungarian_match(
    class_logits: Tensor,
    mask_logits: Tensor,
    targets: ClipTargets,
    num_points: int = 12544,
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
    rule: str = "first_appearance",
    generator: Generators = None,
) -> list[tuple[Tensor, Tensor]]:
    """Match queries to tracks per clip (rules: module docstring).

    class_logits (B, T, Q, C+1); mask_logits (B, T, Q, h, w); targets: the clips' `ClipTargets`.
    `generator`: one for the batch, or one per clip (each draws its clip's T frames of points).
    Returns per clip `(pred_idx, track_idx)`, int64 on the logits' device, `pred_idx` ascending;
    track_idx indexes the clip's own tracks. Raises ValueError for an unknown rule or batch size.
    """
    if rule not in RULES:
        raise ValueError(f"rule: {rule!r}; expected one of {RULES}")
    b, t, q = class_logits.shape[:3]
    if len(targets.counts) != b or targets.num_frames != t:
        raise ValueError(f"targets: {len(targets.counts)} clips of {targets.num_frames} frames; the predictions "
                         f"have {b} of {t}")
    device = mask_logits.device
    rows = None if generator is None or isinstance(generator, torch.Generator) else [t] * b
    points = uniform_points(b * t, num_points, device, generator, rows)  # (B*T, P, 2): one set per frame
    cost = matching_cost(class_logits.flatten(0, 1), mask_logits.flatten(0, 1), targets.frames, points,
                         class_weight, mask_weight, dice_weight)  # (B*T, Q, Nmax)
    cost = cost.unflatten(0, (b, t)).cpu().numpy()  # (B, T, Q, Nmax); one transfer
    present = targets.present.cpu().numpy()
    starts = np.concatenate([[0], np.cumsum(targets.counts)]).astype(int)
    out = []
    for i, n in enumerate(targets.counts):
        seen = present[starts[i] : starts[i + 1]]  # (N, T)
        pred, track = _solve(cost[i, :, :, :n], seen, rule)
        order = np.argsort(pred, kind="stable")
        out.append((torch.from_numpy(pred[order]).to(device), torch.from_numpy(track[order]).to(device)))
    return out


def _solve(cost: np.ndarray, present: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """One clip: cost (T, Q, N), present (N, T) -> (query, track) int64 arrays."""
    n = cost.shape[-1]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if rule == "clip":
        weight = present.T[:, None, :].astype(cost.dtype)  # (T, 1, N)
        mean = (cost * weight).sum(0) / np.maximum(weight.sum(0), 1)  # (Q, N)
        r, c = linear_sum_assignment(mean)
        return r.astype(np.int64), c.astype(np.int64)
    first = present.argmax(1)  # (N,) the first frame each track appears in
    taken: list[int] = []
    preds, tracks = [], []
    for frame in np.unique(first):  # in order of appearance
        cols = np.nonzero(first == frame)[0]
        c = cost[frame][:, cols].copy()  # (Q, n_f)
        c[taken, :] = _TAKEN
        r, k = linear_sum_assignment(c)
        taken += r.tolist()
        preds.append(r)
        tracks.append(cols[k])
    return np.concatenate(preds).astype(np.int64), np.concatenate(tracks).astype(np.int64)
