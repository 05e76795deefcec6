"""What the classifier's head is trained on: COVID-19 or not, or the three findings.

The ``prepare_batch`` of its ``SupervisedTrainer``. Validation, the threshold and every figure
stay on the binary ``label`` (the node's question), so a three-class head is chosen and compared
on the same COVID-19 probability as the binary one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import default_prepare_batch

from monai_app.labels import FINDING_CLASS_NAMES, checked_head_size


def target_key(num_classes: int) -> str:
    """Datalist key of the training target: ``label`` for two classes, ``finding`` for three.

    >>> target_key(2), target_key(3)
    ('label', 'finding')
    """
    return "finding" if checked_head_size(num_classes) == len(FINDING_CLASS_NAMES) else "label"


class ClassifierTarget:
    """``prepare_batch``: the batch's image and the target of a ``num_classes`` head.

    Parameters
    ----------
    num_classes : int
        Outputs of the classifier's head (2 or 3); the items must carry :func:`target_key`.
    """

    def __init__(self, num_classes: int) -> None:
        self.key = target_key(num_classes)

    def __call__(
        self, batchdata: Mapping[str, Any], device: str | torch.device | None = None, non_blocking: bool = False,
        **kwargs: Any,
    ) -> Any:
        if self.key not in batchdata:
            raise KeyError(f"the training items have no {self.key!r}: build them with the head's num_classes")
        return default_prepare_batch({"image": batchdata["image"], "label": batchdata[self.key]}, device,
                                     non_blocking, **kwargs)
