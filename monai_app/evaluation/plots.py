"""Figures of the COVID-19 classifier's evaluation: ROC and PR curves, score histogram,
t-SNE of the embeddings and similar-study retrieval examples.

Every ``plot_*`` function is pure: it takes arrays (no file reading, no model), saves one
PNG with matplotlib's Agg backend and closes its figure. None of them writes patient
identifiers or file names into a figure; the callers pass labels, sources, scores and
distances only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from monai_app.labels import CLASS_NAMES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLOURS = {"covid": "tab:red", "non_covid": "tab:blue"}
"""Colour of each class name (other labels get the next colours of the tab10 cycle)."""

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
"""Markers of the sources in the t-SNE figure, in sorted source order (cycled)."""

EXACT_TSNE_MAX_POINTS = 1000
"""Up to this many points t-SNE runs its exact gradient (faster than Barnes-Hut on small sets)."""

Curves = Mapping[str, tuple[Sequence[int], Sequence[float]]]
"""Curve name -> (true class per image, 1 = covid; probability of covid per image)."""


def _pyplot() -> ModuleType:
    """matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def has_both_labels(labels: Sequence[int]) -> bool:
    """Whether ``labels`` hold both classes 0 and 1 (a ROC/PR curve is then defined).

    >>> has_both_labels([0, 1, 1]), has_both_labels([1, 1]), has_both_labels([])
    (True, False, False)
    """
    y = np.asarray(labels, dtype=int)
    return bool(y.size) and 0 < int(y.sum()) < y.size


def drawn_style(position: int) -> str:
    """Line style of the ``position``-th curve of a figure (solid, dashed, dash-dot, dotted).

    >>> [drawn_style(i) for i in range(5)]
    ['-', '--', '-.', ':', '-']
    """
    return ("-", "--", "-.", ":")[position % 4]


def _checked(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(labels, dtype=int).reshape(-1), np.asarray(scores, dtype=float).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f'Arguments "labels" and "scores" must be of one length, got {y.size} and {p.size}')
    return y, p


def _save(fig: Figure, path: str | Path, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> None:
    """Lay out (within ``rect``, figure fraction), save at 100 dpi and close ``fig``."""
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def _no_curve_note(ax: Axes, text: str = "not defined: fewer than two classes") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def _with_both_labels(curves: Curves) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """The named subsets that can have a curve (both labels present), checked."""
    for name, (labels, scores) in curves.items():
        y, p = _checked(labels, scores)
        if has_both_labels(y.tolist()):
            yield name, y, p


def plot_roc_curves(curves: Curves, path: str | Path, title: str = "COVID-19 classifier: ROC") -> list[str]:
    """Save ROC curves, one line per named subset, with the ROC AUC in the legend.

    Parameters
    ----------
    curves : Mapping
        Curve name -> (labels, covid probabilities), e.g. ``{"all images": ..., "within
        source": ...}``. A subset without both labels has no curve and is left out.
    path : str or pathlib.Path
        PNG file.
    title : str
        Figure title.

    Returns
    -------
    list of str
        Names of the curves drawn.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    drawn: list[str] = []
    for name, y, p in _with_both_labels(curves):
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, drawn_style(len(drawn)), label=f"{name} (n={y.size}, AUC = {roc_auc_score(y, p):.3f})")
        drawn.append(name)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    if not drawn:
        _no_curve_note(ax)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="1 - specificity (false positive rate)",
           ylabel="sensitivity (true positive rate)", title=title)
    ax.legend(loc="lower right", fontsize="small")
    _save(fig, path)
    return drawn


def plot_pr_curves(
    curves: Curves, path: str | Path, title: str = "COVID-19 classifier: precision-recall"
) -> list[str]:
    """Save precision-recall curves, one line per named subset, PR AUC (average precision) in the legend.

    The dotted horizontal line of each curve's colour is its prevalence (a random score's
    precision). Parameters and return value as for :func:`plot_roc_curves`.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    drawn: list[str] = []
    for name, y, p in _with_both_labels(curves):
        precision, recall, _ = precision_recall_curve(y, p)
        style = drawn_style(len(drawn))
        line, = ax.step(recall, precision, style, where="post",
                        label=f"{name} (n={y.size}, PR AUC = {average_precision_score(y, p):.3f})")
        ax.axhline(float(y.mean()), linestyle=":", color=line.get_color(), linewidth=1)
        drawn.append(name)
    if not drawn:
        _no_curve_note(ax)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=title)
    ax.legend(loc="lower left", fontsize="small")
    _save(fig, path)
    return drawn


def plot_score_histogram(
    labels: Sequence[int],
    scores: Sequence[float],
    path: str | Path,
    threshold: float = 0.5,
    bins: int = 20,
    class_names: Sequence[str] = CLASS_NAMES,
) -> None:
    """Save overlaid histograms of the covid probability, one per true class, with the threshold.

    Parameters
    ----------
    labels : Sequence of int
        True class per image (1 = covid).
    scores : Sequence of float
        Probability of covid per image, in ``[0, 1]``.
    path : str or pathlib.Path
        PNG file.
    threshold : float
        Decision threshold (vertical line).
    bins : int
        Bins over ``[0, 1]``.
    class_names : Sequence of str
        Names of classes 0 and 1.
    """
    y, p = _checked(labels, scores)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    edges = np.linspace(0.0, 1.0, bins + 1)
    for cls in (0, 1):
        name = class_names[cls]
        values = p[y == cls]
        ax.hist(values, bins=edges, alpha=0.5, color=COLOURS.get(name), label=f"true {name} (n={values.size})")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}")
    ax.set(xlim=(0, 1), xlabel=f"predicted probability of {class_names[1]}", ylabel="images",
           title="COVID-19 classifier: scores by ground truth")
    ax.legend(fontsize="small")
    _save(fig, path)


def tsne_perplexity(n: int) -> float:
    """t-SNE perplexity for ``n`` points: 30, or ``n - 1`` when fewer (t-SNE needs it below ``n``).

    >>> tsne_perplexity(1000), tsne_perplexity(6)
    (30.0, 5.0)
    """
    return float(max(1, min(30, n - 1)))


def tsne_coordinates(embeddings: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE coordinates of ``embeddings`` (reproducible for a given seed).

    Parameters
    ----------
    embeddings : numpy.ndarray
        ``(n, dimension)`` vectors.
    seed : int
        ``random_state`` of :class:`sklearn.manifold.TSNE`.

    Returns
    -------
    numpy.ndarray
        ``(n, 2)``; all zeros for a single point. Perplexity :func:`tsne_perplexity`; the
        exact method up to :data:`EXACT_TSNE_MAX_POINTS` points, Barnes-Hut beyond.
    """
    from sklearn.manifold import TSNE

    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f'Argument "embeddings" must be a non-empty (n, dimension) array, got shape {x.shape}')
    if len(x) == 1:
        return np.zeros((1, 2))
    tsne = TSNE(
        n_components=2,
        perplexity=tsne_perplexity(len(x)),
        init="pca" if min(x.shape) >= 2 else "random",
        method="exact" if len(x) <= EXACT_TSNE_MAX_POINTS else "barnes_hut",
        random_state=seed,
    )
    return tsne.fit_transform(x)


def plot_embedding_tsne(
    embeddings: np.ndarray,
    labels: Sequence[str],
    sources: Sequence[str],
    path: str | Path,
    seed: int = 0,
    title: str = "Classifier embeddings (t-SNE)",
) -> np.ndarray:
    """Save a t-SNE scatter plot of embeddings, colour = label, marker = source.

    Parameters
    ----------
    embeddings : numpy.ndarray
        ``(n, dimension)`` vectors.
    labels : Sequence of str
        Class name per vector (``covid``/``non_covid``).
    sources : Sequence of str
        Data source per vector.
    path : str or pathlib.Path
        PNG file.
    seed : int
        t-SNE seed.
    title : str
        Figure title.

    Returns
    -------
    numpy.ndarray
        The ``(n, 2)`` coordinates drawn.
    """
    lab, src = np.asarray(labels, dtype=str), np.asarray(sources, dtype=str)
    if not (len(embeddings) == lab.size == src.size):
        raise ValueError('Arguments "embeddings", "labels" and "sources" must be of one length')
    xy = tsne_coordinates(embeddings, seed)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    cycle = iter(c for c in plt.get_cmap("tab10").colors if c not in COLOURS.values())
    colours = {name: COLOURS.get(name) or next(cycle) for name in sorted(set(lab))}
    markers = {name: MARKERS[i % len(MARKERS)] for i, name in enumerate(sorted(set(src)))}
    for label_name, colour in colours.items():
        for source_name, marker in markers.items():
            chosen = (lab == label_name) & (src == source_name)
            if chosen.any():
                ax.scatter(xy[chosen, 0], xy[chosen, 1], c=[colour], marker=marker, s=30, alpha=0.8,
                           edgecolors="none", label=f"{label_name} / {source_name} ({int(chosen.sum())})")
    ax.set(xticks=[], yticks=[], title=f"{title}, n={lab.size}")
    ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5), title="label / source")
    _save(fig, path)
    return xy


def thumbnail(image: np.ndarray, max_size: int = 256) -> np.ndarray:
    """``image`` subsampled by an integer stride so that neither side exceeds ``max_size`` (about).

    >>> thumbnail(np.zeros((1000, 500)), 256).shape
    (250, 125)
    """
    array = np.asarray(image)
    stride = max(1, int(np.ceil(max(array.shape[:2]) / max_size)))
    return array[::stride, ::stride]


def plot_retrieval_example(
    query_image: np.ndarray | None,
    query_label: str,
    neighbour_images: Sequence[np.ndarray | None],
    neighbour_labels: Sequence[str],
    distances: Sequence[float],
    path: str | Path,
    title: str = "Similar-study retrieval",
) -> None:
    """Save a row of thumbnails: a query image then its nearest reference images.

    Parameters
    ----------
    query_image : numpy.ndarray or None
        2-D image, intensities in ``[0, 1]`` (:func:`monai_app.data.image_io.load_chest_xray`);
        ``None`` draws an empty panel.
    query_label : str
        True class of the query.
    neighbour_images : Sequence of numpy.ndarray or None
        2-D images of the neighbours, nearest first; ``None`` where the image is not
        available (an empty panel is drawn).
    neighbour_labels : Sequence of str
        Class of each neighbour.
    distances : Sequence of float
        Index distance of each neighbour to the query.
    path : str or pathlib.Path
        PNG file.
    title : str
        Figure title.

    Raises
    ------
    ValueError
        If an image is not 2-D or the neighbour sequences differ in length.
    """
    if not (len(neighbour_images) == len(neighbour_labels) == len(distances)):
        raise ValueError('Arguments "neighbour_images", "neighbour_labels" and "distances" must be of one length')
    images = [query_image, *neighbour_images]
    if any(im is not None and np.ndim(im) != 2 for im in images):
        raise ValueError("retrieval example images must be 2-D arrays")
    titles = [f"query\n{query_label}"] + [
        f"#{i} {label}\nd = {d:.3f}" for i, (label, d) in enumerate(zip(neighbour_labels, distances), start=1)
    ]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(images), figsize=(2.4 * len(images), 2.9), squeeze=False)
    for ax, image, panel_title, label in zip(axes[0], images, titles, [query_label, *neighbour_labels]):
        if image is None:
            ax.text(0.5, 0.5, "image not\navailable", ha="center", va="center", color="grey", transform=ax.transAxes)
        else:
            ax.imshow(thumbnail(image), cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_title(panel_title, fontsize="small", color=COLOURS.get(label, "black"))
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize="medium")
    _save(fig, path, rect=(0, 0, 1, 0.9))  # room for the title above the panels' titles


def plot_reliability(
    panels: Mapping[str, tuple[Sequence[int] | np.ndarray, Mapping[str, Sequence[float] | np.ndarray]]],
    path: str | Path,
    n_bins: int = 10,
) -> Path:
    """Reliability diagrams: one panel per subset, each curve one set of probabilities of it.

    Parameters
    ----------
    panels : Mapping
        Panel title -> (true class per image, {curve name: COVID-19 probability per image}).
        Each curve plots, per equal-width bin of the probability, the observed positive rate
        against the bin's mean probability (marker area ~ bin count); the diagonal is perfect
        calibration. The legend gives each curve's ECE.
    path : str or pathlib.Path
        PNG to write.
    n_bins : int
        Bins on [0, 1].
    """
    from monai_app.evaluation.calibration import expected_calibration_error, reliability_bins

    plt = _pyplot()
    n = max(1, len(panels))
    columns = min(4, n)
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.4 * rows), squeeze=False)
    for ax, (title, (labels, curves)) in zip(axes.ravel(), panels.items()):
        ax.plot([0, 1], [0, 1], color="0.7", linewidth=1, linestyle=":")
        for position, (name, probabilities) in enumerate(curves.items()):
            bins = reliability_bins(labels, probabilities, n_bins)
            points = [(m, o, c) for m, o, c in zip(bins["mean_predicted"], bins["observed"], bins["count"]) if c]
            ece = expected_calibration_error(labels, probabilities, n_bins)
            xs, ys, counts = zip(*points)
            ax.plot(xs, ys, drawn_style(position), marker="o", markersize=3, label=f"{name} (ECE {ece:.3f})")
            ax.scatter(xs, ys, s=[6 + 3 * c for c in counts], alpha=0.3)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("predicted COVID-19 probability", fontsize=8)
        ax.set_ylabel("observed COVID-19 rate", fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
