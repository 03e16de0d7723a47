"""The input checks the evaluators share: names per class, one target per prediction, id ranges.

Each raises `InputError` (a `ValueError`) whose message names the value, what was found and what
was expected.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized

from torch import Tensor

from eomt.errors import InputError


def class_names_or_ids(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """`class_names` as a list, checked to hold `num_classes` names; the ids as strings when None."""
    if class_names is None:
        return [str(c) for c in range(num_classes)]
    if len(class_names) != num_classes:
        raise InputError(f"class_names: found {len(class_names)} names, expected {num_classes}")
    return list(class_names)


def check_pairs(preds: Sized, targets: Sized) -> None:
    """One target per prediction in an `update` batch."""
    if len(preds) != len(targets):
        raise InputError(
            f"update: found {len(preds)} predictions and {len(targets)} targets, expected as many"
        )


def check_ids(name: str, ids: Tensor, num_classes: int, *, found: str = "class ids", note: str = "") -> None:
    """Every value of `ids` (any shape, possibly empty) lies in [0, num_classes).

    name: what the ids are, first in the message; found: how they are called after "found"
    (e.g. "category_id"); note: appended to the expectation (e.g. the ignore value).
    """
    if ids.numel() and (ids.min() < 0 or ids.max() >= num_classes):
        raise InputError(
            f"{name}: found {found} in [{int(ids.min())}, {int(ids.max())}], "
            f"expected ids in [0, {num_classes}){note}"
        )


def check_same_shape(name: str, found: tuple[int, ...], expected: tuple[int, ...], what: str = "shape") -> None:
    """A prediction's (H, W) equals its target's (`what` is "shape" or "size" in the message)."""
    if tuple(found) != tuple(expected):
        raise InputError(f"{name}: found {what} {tuple(found)}, expected the target's {tuple(expected)}")
