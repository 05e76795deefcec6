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
DEFAULT_THRESHOLD = 0.5
"""Decision threshold on the COVID-19 probability when neither the bundle nor the node names one."""
