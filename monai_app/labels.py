"""The classifier's classes and the default decision threshold: one definition for the whole project.

Pure Python, so the serving node, the report and the evaluation share it without importing torch.
"""

from __future__ import annotations

CLASS_NAMES = ("non_covid", "covid")
"""Output index -> class name of the classifier (index 1 is the positive class)."""
POSITIVE_CLASS = 1
"""Index of COVID-19 in the classifier's output."""
CLASS_LABELS = {name: index for index, name in enumerate(CLASS_NAMES)}
"""Class name (as in the manifest's ``label`` column) -> output index."""
FINDING_CLASS_NAMES = ("no_finding", "covid", "other_pneumonia")
"""Output index -> class of the three-class head; COVID-19 keeps :data:`POSITIVE_CLASS`, as in the binary head."""
NO_FINDING_TEXTS = frozenset({"no finding"})
"""A non-COVID row's ``finding`` (lower case) that means a normal radiograph; any other text is another pneumonia."""
HEAD_SIZES = (len(CLASS_NAMES), len(FINDING_CLASS_NAMES))
"""Outputs a classifier head may have: COVID-19 or not, or the three findings."""


def checked_head_size(num_classes: int) -> int:
    """``num_classes`` as an int if a head may have it (:data:`HEAD_SIZES`), else ``ValueError``.

    >>> checked_head_size(3)
    3
    """
    if int(num_classes) not in HEAD_SIZES:
        raise ValueError(f"num_classes must be one of {HEAD_SIZES}, got {num_classes}")
    return int(num_classes)


DEFAULT_THRESHOLD = 0.5
"""Decision threshold on the COVID-19 probability when neither the bundle nor the node names one."""
