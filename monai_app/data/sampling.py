"""Source-aware sampling for the classifier.

In the shared data most negatives come from one source (NIH) and all positives from others,
so a network can score well by recognising the source. Two counter-measures live here:
sampling weights that balance the labels *within* the data's (source, label) cells, and the
selection of the sources that hold both labels (where only the disease can separate them),
used to choose the checkpoint.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)


def _cell(item: Mapping[str, object]) -> tuple[str, int]:
    return str(item.get("source", "unknown")), int(item["label"])  # type: ignore[call-overload]


def source_balanced_weights(datalist: Sequence[Mapping[str, object]], min_cell: int = 20) -> list[float]:
    """Per-item sampling weights: each label gets half the mass, split evenly across its sources.

    A (source, label) cell smaller than ``min_cell`` items gets proportionally less mass, so
    that a handful of images is not drawn dozens of times per epoch.

    Parameters
    ----------
    datalist : Sequence of Mapping
        Items with an integer ``label`` and a ``source``.
    min_cell : int
        Cells with fewer items are weighted as if they had ``min_cell`` (each item ``1/min_cell``).

    Returns
    -------
    list of float
        One weight per item, summing to 1 (for ``torch.utils.data.WeightedRandomSampler``).

    Raises
    ------
    ValueError
        If ``min_cell`` < 1 or the datalist is empty.

    Examples
    --------
    >>> items = [{"source": "a", "label": 0}] * 3 + [{"source": "b", "label": 0}] + [{"source": "a", "label": 1}] * 2
    >>> [round(w, 3) for w in source_balanced_weights(items, min_cell=1)]
    [0.083, 0.083, 0.083, 0.25, 0.25, 0.25]
    """
    if min_cell < 1:
        raise ValueError(f'Argument "min_cell" must be >= 1, got {min_cell}')
    if not datalist:
        raise ValueError("the datalist is empty")
    cells = Counter(_cell(item) for item in datalist)
    per_item = {cell: 1.0 / max(count, min_cell) for cell, count in cells.items()}
    label_mass: dict[int, float] = {}
    for cell, count in cells.items():
        label_mass[cell[1]] = label_mass.get(cell[1], 0.0) + per_item[cell] * count
    share = 1.0 / len(label_mass)
    weights = [per_item[_cell(item)] * share / label_mass[_cell(item)[1]] for item in datalist]
    for cell in sorted(cells):
        mass = per_item[cell] * cells[cell] * share / label_mass[cell[1]]
        logger.info("sampling cell source=%s label=%d: %d items, %.3f of the draws", cell[0], cell[1], cells[cell], mass)
    return weights


def sources_with_both_labels(datalist: Sequence[Mapping[str, object]]) -> list[str]:
    """Sorted names of the sources that hold more than one label in ``datalist``.

    >>> sources_with_both_labels([{"source": "a", "label": 0}, {"source": "a", "label": 1}, {"source": "b", "label": 0}])
    ['a']
    """
    labels: dict[str, set[int]] = {}
    for item in datalist:
        source, label = _cell(item)
        labels.setdefault(source, set()).add(label)
    return sorted(s for s, found in labels.items() if len(found) > 1)


def within_source_items(datalist: Sequence[Mapping[str, object]]) -> list[Mapping[str, object]]:
    """The items of the sources that hold both labels (where the source cannot give the label away).

    Raises
    ------
    ValueError
        If no source holds both labels.

    >>> within_source_items([{"source": "a", "label": 0}, {"source": "a", "label": 1}, {"source": "b", "label": 0}])
    [{'source': 'a', 'label': 0}, {'source': 'a', 'label': 1}]
    """
    sources = set(sources_with_both_labels(datalist))
    if not sources:
        raise ValueError("no source holds both labels: the within-source selection is empty")
    selected = [item for item in datalist if _cell(item)[0] in sources]
    logger.info("within-source items: %d of %d (sources %s)", len(selected), len(datalist), sorted(sources))
    return selected
