"""The bundle's probability calibration as a postprocessing transform of the classifier's logits."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

from monai_app.calibration import IDENTITY, Calibration
from monai_app.labels import POSITIVE_CLASS


def logit_margin(logits: torch.Tensor | np.ndarray | Sequence[float]) -> float:
    """``logit[covid] - logit[non_covid]`` of one image's two logits."""
    values = torch.as_tensor(logits).reshape(-1).double()
    return float(values[POSITIVE_CLASS] - values[1 - POSITIVE_CLASS])


class CalibratedProbabilityd(MapTransform):
    """Two class logits -> ``[1 - p, p]`` with ``p`` the calibrated COVID-19 probability.

    Replaces the softmax of the classifier's ``postprocessing`` where the bundle's
    calibration applies (the node, ``inference_classifier.yaml``); ``calibration=None`` is
    the plain softmax.

    >>> t = CalibratedProbabilityd("pred", Calibration("temperature", temperature=2.0))
    >>> t({"pred": torch.tensor([0.0, 2.0])})["pred"].round(decimals=4).tolist()
    [0.2689, 0.7311]
    """

    def __init__(self, keys: str | Sequence[str], calibration: Calibration | None) -> None:
        super().__init__(keys)
        self.calibration = calibration if calibration is not None else Calibration(IDENTITY)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            logits = torch.as_tensor(d[key])
            p = float(self.calibration.probability(logit_margin(logits)))
            probabilities = [0.0, 0.0]
            probabilities[POSITIVE_CLASS], probabilities[1 - POSITIVE_CLASS] = p, 1.0 - p
            # float64: the decision compares p with the mapped threshold, float32 rounding could flip a tie
            d[key] = torch.tensor(probabilities, dtype=torch.float64, device=logits.device)
        return d
