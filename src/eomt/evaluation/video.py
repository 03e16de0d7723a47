"""Video instance segmentation: mask AP with the YouTube-VIS definition, and identity switches.

AP (the YouTube-VIS fork of cocoapi, `ytvoseval.py`): the IoU of a predicted track and a
ground-truth track is spatio-temporal, sum over frames of the intersections / sum over frames of the
unions (a frame where only one of them is present adds its area to the union). Per video and
category the predictions are taken in descending score (at most 100), matched greedily to the
ground-truth tracks at each IoU threshold 0.50:0.05:0.95 (crowd tracks are ignored and may absorb
several predictions, as in COCO); precision is interpolated at 101 recall points and AP averaged
over thresholds, recall points and the categories that have a ground-truth track. AR1 / AR10:
recall with at most 1 / 10 predictions per video and category.

Identity switches (the CLEAR-MOT count, Bernardin & Stiefelhagen 2008): in every frame each
(non-crowd) ground-truth object keeps the track id it was last matched to while a prediction of
that id still overlaps it with IoU >= 0.5 (a valid correspondence is kept); otherwise it is
matched to the predicted track whose mask overlaps it best, if that IoU is >= 0.5
(class-agnostic; ties to the first prediction). A switch is a match to a track id different from
the one of the object's previous match; frames without a match do not reset it. Only tracks
scoring at least `track_threshold` (0.5, `VideoPredictor`'s default) take part, the tracks a user
sees; AP ranks every prediction. Both rules matter when a model makes duplicates: two tracks on one
object, each following it, are no switch; re-matching to the best IoU in every frame would count
a switch whenever the two trade places by a few pixels, and low-scoring predictions (a VidEoMT's
unmatched queries) would take matches too.

IoUs are computed when a video arrives (batched matrix products over frames), so the state kept per
video is small (the track IoU matrix and the per-track labels / scores) and is gathered across
processes before `compute()`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from eomt.errors import InputError
from eomt.structures import VideoInstanceResult
from eomt.evaluation.checks import check_ids, check_pairs, class_names_or_ids
from eomt.evaluation.distributed import all_gather_objects

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # as cocoapi: 0.50:0.05:0.95
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETS = (1, 10, 100)
SWITCH_IOU = 0.5
TRACK_THRESHOLD = 0.5  # the score a prediction needs to count in the identity switches


def clip_instances(class_logits: Tensor, mask_logits: Tensor, size: tuple[int, int],
                   top_k: int = 10) -> VideoInstanceResult:
    """The official VidEoMT YouTube-VIS rule (`inference_video_vis`): one video's per-frame logits ->
    its `top_k` (query, class) tracks.

    class_logits (T, K, C+1), mask_logits (T, K, h, w) of one video (the network's output for a
    clip, frames in order). The class logits are averaged over the frames, softmaxed, the no-object
    column dropped; the top_k scores over queries x classes are kept (a query may appear with
    several classes); a track's masks are its query's mask logits, bilinearly resized to `size`
    (H, W) (the network input's size: restore resized or padded inputs first), > 0. The track id is
    the query index.
    """
    t, k, c1 = class_logits.shape
    scores = class_logits.float().mean(0).softmax(-1)[:, :-1]  # (K, C)
    top, flat = scores.flatten().topk(min(top_k, k * (c1 - 1)))  # over K * C
    queries = flat // (c1 - 1)
    masks = torch.nn.functional.interpolate(mask_logits[:, queries].float(), size=size, mode="bilinear",
                                            align_corners=False)  # (T, D, H, W)
    return VideoInstanceResult(masks.transpose(0, 1) > 0, flat % (c1 - 1), top, queries)  # masks (D, T, H, W)


def track_ious(pred: Tensor, gt: Tensor, frames_per_chunk: int = 8) -> tuple[Tensor, Tensor]:
    """Spatio-temporal and per-frame mask IoUs of D predicted and G ground-truth tracks.

    pred (D, T, H, W), gt (G, T, H, W), bool. Returns (track IoU (D, G) float64: summed
    intersections / summed unions, 0 where both tracks are empty; frame IoU (T, D, G) float32, 0 where
    both are absent). Intersections are float32 matrix products per frame (exact below 2^24 pixels
    per frame), summed in float64; frames are processed `frames_per_chunk` at a time to bound memory.
    """
    d, t, h, w = pred.shape
    g = gt.shape[0]
    inter = torch.zeros(t, d, g, dtype=torch.float32, device=gt.device)
    area_p = torch.zeros(t, d, dtype=torch.float32, device=gt.device)
    area_g = torch.zeros(t, g, dtype=torch.float32, device=gt.device)
    for s in range(0, t, frames_per_chunk):  # chunks of frames, each one batched product
        n = min(t, s + frames_per_chunk) - s
        p = pred[:, s : s + n].transpose(0, 1).reshape(n, d, h * w).float()  # (t', D, HW)
        q = gt[:, s : s + n].transpose(0, 1).reshape(n, g, h * w).float()  # (t', G, HW)
        inter[s : s + frames_per_chunk] = torch.bmm(p, q.transpose(1, 2))  # (t', D, G)
        area_p[s : s + frames_per_chunk], area_g[s : s + frames_per_chunk] = p.sum(2), q.sum(2)
    union = area_p[:, :, None] + area_g[:, None, :] - inter  # (T, D, G)
    frame_iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros((), device=gt.device))
    inter_sum = inter.double().sum(0)  # (D, G)
    union_sum = union.double().sum(0)
    zero = torch.zeros((), dtype=torch.float64, device=gt.device)
    return torch.where(union_sum > 0, inter_sum / union_sum.clamp(min=1), zero), frame_iou


def identity_switches(frame_iou: Tensor, gt_present: Tensor, track_ids: Tensor,
                      threshold: float = SWITCH_IOU) -> tuple[int, int]:
    """(identity switches, matched object-frames) of one video (rules: module docstring).

    frame_iou (T, D, G), gt_present (T, G) bool (crowd objects already left out), track_ids (D,).
    """
    t, d, g = frame_iou.shape
    if d == 0 or g == 0:
        return 0, 0
    best_iou, best = frame_iou.max(1)  # (T, G): the best prediction per object and frame
    matched = gt_present & (best_iou >= threshold)
    uniq, inverse = torch.unique(track_ids, return_inverse=True)  # a track id may label several predictions
    owner = torch.nn.functional.one_hot(inverse, len(uniq)).float()  # (D, U)
    valid = torch.einsum("tdg,du->tug", (frame_iou >= threshold).float(), owner) > 0  # (T, U, G): id u overlaps g
    best_id = inverse[best].tolist()  # (T, G) as nested lists: the loop below is over T x G scalars
    valid_l, matched_l = valid.tolist(), matched.tolist()
    switches = 0
    for j in range(g):  # one short sequence per object
        last = -1
        for f in range(t):
            if not matched_l[f][j] or (last >= 0 and valid_l[f][last][j]):
                continue  # no match, or the previous correspondence still holds
            switches += int(last >= 0 and best_id[f][j] != last)
            last = best_id[f][j]
    return switches, int(matched.sum())


def _check(name: str, masks: Tensor, *per_track: Tensor) -> None:
    if masks.dim() != 4 or any(v.numel() != masks.shape[0] for v in per_track):
        raise InputError(f"{name}: found masks of shape {tuple(masks.shape)} and {[v.numel() for v in per_track]} "
                         "per-track values, expected (N, T, H, W) masks and N values each")


class VideoInstanceEvaluator:
    """YouTube-VIS mask AP and identity switches over videos (`update` takes one
    `VideoInstanceResult` and one `eomt.data.video.VideoTarget` per video). num_classes: C;
    switch_iou / track_threshold: the IoU of a match and the score of a track in the identity
    switches and matched object-frames (module docstring)."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None,
                 switch_iou: float = SWITCH_IOU, track_threshold: float = TRACK_THRESHOLD) -> None:
        self.class_names = class_names_or_ids(class_names, num_classes)
        self.num_classes, self.switch_iou, self.track_threshold = num_classes, switch_iou, track_threshold
        self.reset()

    def reset(self) -> None:
        """Forget every video seen so far."""
        self.records: list[dict[str, Any]] = []

    def update(self, preds: Sequence[VideoInstanceResult], targets: Sequence[Any]) -> None:
        """Add a batch of videos: predicted tracks and targets (masks (G, T, H, W), labels,
        is_crowd), same order, same (T, H, W)."""
        check_pairs(preds, targets)
        for pred, target in zip(preds, targets):
            _check("VideoInstanceResult", pred.masks, pred.labels, pred.scores)
            _check("VideoTarget", target.masks, target.labels, target.is_crowd)
            if pred.masks.shape[0] and pred.masks.shape[1:] != target.masks.shape[1:]:
                raise InputError(f"VideoInstanceResult.masks: found (T, H, W) {tuple(pred.masks.shape[1:])}, "
                                 f"expected the target's {tuple(target.masks.shape[1:])}")
            for name, labels in (("VideoInstanceResult.labels", pred.labels), ("VideoTarget.labels", target.labels)):
                check_ids(name, labels, self.num_classes, found="ids")
            gt_masks = target.masks.bool()  # the IoUs are computed where the masks are (a GPU if there)
            pred_masks = pred.masks.bool().to(gt_masks.device).reshape(-1, *gt_masks.shape[1:])  # (D, T, H, W)
            ious, frame_iou = (v.cpu() for v in track_ious(pred_masks, gt_masks))
            crowd = target.is_crowd.bool().cpu()
            ids = pred.track_ids if pred.track_ids is not None else torch.arange(len(pred.labels))
            present = gt_masks.flatten(2).any(2).t().cpu() & ~crowd[None]  # (T, G)
            tracked = pred.scores.detach().cpu() >= self.track_threshold  # (D,) the tracks a user sees
            switches, matched = identity_switches(frame_iou[:, tracked], present, ids.cpu().long()[tracked],
                                                  self.switch_iou)
            self.records.append({
                "ious": ious.numpy(), "dt_labels": pred.labels.cpu().numpy().astype(np.int64),
                "dt_scores": pred.scores.detach().float().cpu().numpy(),
                "gt_labels": target.labels.cpu().numpy().astype(np.int64), "gt_crowd": crowd.numpy(),
                "switches": switches, "matched": matched, "present": int(present.sum()),
            })

    def compute(self) -> dict[str, Any]:
        """AP, AP50, AP75, AR1, AR10 (percent, NaN without any ground-truth track), AP per class
        ("per_class"), identity switches ("id_switches") and the percentage of ground-truth
        object-frames matched at IoU >= 0.5 by a track scoring >= `track_threshold` ("matched_frames")."""
        records = [r for part in all_gather_objects(self.records) for r in part]
        precision, recall = ytvis_accumulate(records, self.num_classes)  # (T, R, K, M), (T, K, M)
        present = sum(r["present"] for r in records)
        out: dict[str, Any] = {
            "ap": _mean(precision[..., -1]), "ap50": _mean(precision[0, ..., -1]), "ap75": _mean(precision[5, ..., -1]),
            "ar1": _mean(recall[..., 0]), "ar10": _mean(recall[..., 1]),
            "per_class": {name: _mean(precision[:, :, k, -1]) for k, name in enumerate(self.class_names)},
            "id_switches": sum(r["switches"] for r in records),
            "matched_frames": 100.0 * sum(r["matched"] for r in records) / present if present else math.nan,
        }
        return out


def _mean(values: np.ndarray) -> float:
    defined = values[values > -1]
    return float(defined.mean()) * 100 if defined.size else math.nan


def _match(ious: np.ndarray, ignore: np.ndarray, crowd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching of one video and category at every threshold (cocoapi's evaluateImg rules).

    ious (D, G) with predictions in descending score; returns matched (T, D) and ignored (T, D):
    a prediction matched to an ignored (crowd) track is ignored. Per prediction, the best track
    not yet taken (crowd tracks can be taken again) with IoU >= the threshold, regular tracks first;
    ties go to the last track, as cocoapi's loop does.
    """
    n_t, (d, g) = len(IOU_THRESHOLDS), ious.shape
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]  # (T, 1)
    taken = np.zeros((n_t, g), dtype=bool)
    matched, ignored = np.zeros((n_t, d), dtype=bool), np.zeros((n_t, d), dtype=bool)
    if g == 0:  # nothing to match: every prediction is a false positive
        return matched, ignored
    rows = np.arange(n_t)
    for i in range(d):  # in score order: earlier predictions take their tracks first
        cand = (ious[i][None] >= thresholds) & (~taken | crowd[None])  # (T, G)
        value = np.where(cand, ious[i][None], -np.inf)
        best = []
        for group in (~ignore, ignore):  # regular tracks first, ignored ones only if none matched
            v = np.where(group[None], value, -np.inf)
            best.append((g - 1 - np.argmax(v[:, ::-1], 1), np.isfinite(v).any(1)))  # last of the maxima
        (m_reg, has_reg), (m_ign, has_ign) = best
        m = np.where(has_reg, m_reg, m_ign)
        hit = has_reg | has_ign
        matched[:, i], ignored[:, i] = hit, hit & ignore[m]
        taken[rows[hit], m[hit]] = True
    return matched, ignored


def ytvis_accumulate(records: Sequence[dict[str, Any]], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision (T, R, K, M) at the 101 recall points and recall (T, K, M) over `MAX_DETS`; -1 where
    a category has no (non-crowd) ground-truth track, as cocoapi's accumulate."""
    n_t, n_r, n_m = len(IOU_THRESHOLDS), len(RECALL_POINTS), len(MAX_DETS)
    precision = -np.ones((n_t, n_r, num_classes, n_m))
    recall = -np.ones((n_t, num_classes, n_m))
    for k in range(num_classes):
        per_video, n_gt = [], 0
        for r in records:
            dts, gts = np.flatnonzero(r["dt_labels"] == k), np.flatnonzero(r["gt_labels"] == k)
            if not len(dts) and not len(gts):
                continue
            order = dts[np.argsort(-r["dt_scores"][dts], kind="mergesort")][: MAX_DETS[-1]]
            crowd = r["gt_crowd"][gts]
            gts = gts[np.argsort(crowd, kind="mergesort")]  # regular tracks first
            matched, ignored = _match(r["ious"][np.ix_(order, gts)], r["gt_crowd"][gts], r["gt_crowd"][gts])
            per_video.append((r["dt_scores"][order], matched, ignored))
            n_gt += int((~crowd).sum())
        if n_gt == 0:
            continue
        for m, max_det in enumerate(MAX_DETS):
            scores = np.concatenate([s[:max_det] for s, _, _ in per_video])
            order = np.argsort(-scores, kind="mergesort")
            matched = np.concatenate([a[:, :max_det] for _, a, _ in per_video], 1)[:, order]  # (T, D)
            ignored = np.concatenate([b[:, :max_det] for _, _, b in per_video], 1)[:, order]
            tp = np.cumsum(matched & ~ignored, 1).astype(np.float64)
            fp = np.cumsum(~matched & ~ignored, 1).astype(np.float64)
            rc, pr = tp / n_gt, tp / (tp + fp + np.spacing(1))  # (T, D)
            recall[:, k, m] = rc[:, -1] if rc.shape[1] else 0.0
            pr = np.maximum.accumulate(pr[:, ::-1], 1)[:, ::-1]  # precision envelope
            for t in range(n_t):  # 10 thresholds: searchsorted is per row
                idx = np.searchsorted(rc[t], RECALL_POINTS, side="left")
                ok = idx < rc.shape[1]
                precision[t, :, k, m] = np.where(ok, pr[t][np.minimum(idx, max(rc.shape[1] - 1, 0))]
                                                 if rc.shape[1] else 0.0, 0.0)
    return precision, recall
