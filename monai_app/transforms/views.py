"""Two random views of one sample, for contrastive pretraining."""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Mapping

from monai.transforms import RandomizableTrait, Transform

VIEW_KEYS = ("view_1", "view_2")
"""Keys of the two augmented views in a pretraining batch."""


class TwoViewsd(Transform, RandomizableTrait):
    """Two independent random views of one sample: ``{"view_1": x1, "view_2": x2}``.

    ``transform`` (random augmentations ending in the classifier input) runs twice on deep
    copies of the sample, and the value under ``image_key`` of each result is one view.
    A random transform for MONAI's caching datasets: the deterministic steps before it are
    cached, it runs every time.

    Parameters
    ----------
    transform : Callable
        Dictionary transform that returns the view under ``image_key``.
    image_key : str
        Key of the view in the transform's output.
    """

    def __init__(self, transform: Callable[[Mapping[Hashable, object]], Mapping[Hashable, object]],
                 image_key: str = "image") -> None:
        self.transform = transform
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[str, object]:
        return {key: self.transform(copy.deepcopy(dict(data)))[self.image_key] for key in VIEW_KEYS}
