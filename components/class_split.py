"""Class splits for unseen-class evaluation: which classes each output split keeps.

Metric learning is judged on classes never seen in training (Musgrave et al. 2020; the
CUB-200 / Cars196 / SOP protocols): train on some classes, retrieve among the others. Labels
stay the original class ids; a split only drops the examples of the other classes.

Pure Python, no TensorFlow: the configuration validates with it, ExampleGen filters with it.
"""

from __future__ import annotations

import random
from typing import Dict, Iterable, List, Optional, Set, Tuple

Classes = Tuple[int, ...]


class ClassSplitError(ValueError):
    """A bad class split; `field` is the DataConfig field at fault."""

    def __init__(self, field: str, problem: str):
        super().__init__(problem)
        self.field = field


def parse_classes(text: str, num_classes: int, field: str) -> Classes:
    """ "0-4", "0,2,7" or "0-2,7" -> sorted distinct class ids, each in [0, num_classes)."""
    classes: Set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            raise ClassSplitError(field, f"expected class ids and ranges such as 0-4 or 0,2,7, got {text!r}") from None
        if low > high:
            raise ClassSplitError(field, f"empty range {part.strip()!r}")
        if low < 0 or high >= num_classes:
            raise ClassSplitError(
                field, f"{part.strip()!r} is outside the classes 0-{num_classes - 1} (data.num_classes = {num_classes})"
            )
        classes.update(range(low, high + 1))
    return tuple(sorted(classes))


def random_half(num_classes: int, seed: int) -> Tuple[Classes, Classes]:
    """(train, eval): a seeded random half of the classes (the smaller half when odd) to train on."""
    train = random.Random(seed).sample(range(num_classes), num_classes // 2)
    return tuple(sorted(train)), tuple(sorted(set(range(num_classes)) - set(train)))


def resolve(train_classes: str, eval_classes: str, class_split: str, num_classes: int) -> Optional[Dict[str, Classes]]:
    """{"train": ids, "eval": ids} of a class split, or None when every split keeps every class.

    `class_split` is "random:SEED"; otherwise one or both lists are given, and a missing one is
    the complement of the other. The two sides must be disjoint and non-empty.
    """
    if class_split:
        if train_classes or eval_classes:
            raise ClassSplitError("class_split", "give either a random split or explicit class lists, not both")
        kind, _, seed = class_split.partition(":")
        if kind != "random" or not seed.strip().lstrip("-").isdigit():
            raise ClassSplitError("class_split", f"expected random:SEED, e.g. random:0, got {class_split!r}")
        train, evaluated = random_half(num_classes, int(seed))
    elif train_classes or eval_classes:
        everything = set(range(num_classes))
        train_given = parse_classes(train_classes, num_classes, "train_classes") if train_classes else None
        eval_given = parse_classes(eval_classes, num_classes, "eval_classes") if eval_classes else None
        # One of the two is given (this branch's condition): `or ()` only narrows the type.
        train = train_given if train_given is not None else tuple(sorted(everything - set(eval_given or ())))
        evaluated = eval_given if eval_given is not None else tuple(sorted(everything - set(train)))
        overlap = set(train) & set(evaluated)
        if overlap:
            raise ClassSplitError(
                "eval_classes",
                f"{format_classes(overlap)} also among the train classes: "
                "unseen-class evaluation needs disjoint classes",
            )
    else:
        return None
    for field, classes in (("train_classes", train), ("eval_classes", evaluated)):
        if not classes:
            raise ClassSplitError(field, "no classes left for this split")
    return {"train": train, "eval": evaluated}


def format_classes(classes: Iterable[int]) -> str:
    """Sorted ids as compact ranges: (0, 1, 2, 4) -> "0-2,4"."""
    ids = sorted(set(classes))
    parts: List[List[int]] = []
    for i in ids:
        if parts and parts[-1][1] == i - 1:
            parts[-1][1] = i
        else:
            parts.append([i, i])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in parts)
