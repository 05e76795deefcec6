"""The bundle's classifier inference, loaded by ID from ``configs/inference_classifier.yaml`` for the serving node.

Nothing here re-defines a transform or a network: the preprocessing (loader, crop, pad, lung
channel from the U-Net, resize, CLAHE, channel stacking), the classifier and its
postprocessing are the bundle's own MONAI standard IDs (``preprocessing``, ``network``,
``postprocessing``, plus ``model_file``, ``cls_lung_model_file`` and ``threshold``), parsed with
MONAI's ``ConfigParser`` from ``configs/common.yaml`` with ``inference_classifier.yaml`` stacked on it.
On request ``predict`` adds the classifier's Grad-CAM (:mod:`monai_app.relevance`); each prepared
image carries the geometry back to its source pixels (:mod:`monai_app.transforms.geometry`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

from monai_app.calibration import Calibration, OperatingPoint
from monai_app.labels import DEFAULT_THRESHOLD, POSITIVE_CLASS
from monai_app.networks.classifier import CovidClassifier, load_classifier_weights
from monai_app.relevance import grad_cam_from_feature_maps, layer_output
from monai_app.retrieval.index import Neighbour, SimilarityIndex
from monai_app.runtime import NetworkRuntime, load_runtime
from monai_app.transforms.chest_appearance import AppearanceModel
from monai_app.transforms.classifier_input import LungProbabilityd
from monai_app.transforms.dictionary import LoadChestXrayd
from monai_app.transforms.geometry import ModelGrid, grid_from_meta
from monai_app.transforms.lung_fields import LungFields, measure_lung_fields
from monai_app.weights import sha256_of

INFERENCE_CONFIGS = ("configs/common.yaml", "configs/inference_classifier.yaml")
"""The classifier's inference configs, stacked in this order (as ``--config_file`` lists them)."""
METADATA = "configs/metadata.json"
INDEX_DIR = "models/index"
SELF_MATCHES = 4  # extra neighbours asked for, so that leaving out the query's own study still leaves k
SEARCH_K = 20_000
"""Annoy search effort of the node's queries: recall@4 1.00 up to 10^6 items at 6.9 ms, where
Annoy's default (trees x k) gives 0.69 at 10^3 and 0.24 at 10^6 (scripts/bench_pacs.py)."""
APPEARANCE_MODEL = "models/chest_appearance.npz"
"""The frontal-chest appearance model (:mod:`monai_app.transforms.chest_appearance`)."""
IMAGE_CHANNEL = 0
LUNG_CHANNEL = 1
"""Channel of the classifier input that holds the U-Net lung probability."""


def combined_sha256(digests: Sequence[str]) -> str:
    """One SHA-256 standing for several files, from their digests in order.

    >>> combined_sha256(["ab", "cd"]) == combined_sha256(["ab", "cd"]) != combined_sha256(["cd", "ab"])
    True
    """
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is the GPU when one is usable, else the CPU; ``"cuda"`` without a GPU is an error.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but PyTorch sees no usable GPU")
    return torch.device(name)


@dataclass(frozen=True)
class ModelIdentity:
    """What produced a result: the bundle's name, version and authors, and the SHA-256 of its weights."""

    name: str
    version: str
    authors: str
    sha256: str
    files: tuple[tuple[str, str], ...]  # (file name, its SHA-256): U-Net, classifier, then the appearance model
    calibration: str = "uncalibrated"  # the probability's calibration: method and parameters in words
    calibration_sha256: str = ""  # SHA-256 of its parameters (Calibration.sha256); "" when uncalibrated


def to_uint8(image: np.ndarray) -> np.ndarray:
    """An image in [0, 1] as 8-bit grey (``round(255 x)``), the display form of the loaded source.

    >>> to_uint8(np.array([0.0, 0.5, 1.0], np.float32)).tolist()
    [0, 128, 255]
    """
    scaled = np.clip(image, 0.0, 1.0)  # one new buffer, then in place: a detector image is 5 M pixels
    np.multiply(scaled, 255.0, out=scaled)
    return np.rint(scaled, out=scaled).astype(np.uint8)


@dataclass(frozen=True)
class PreparedImage:
    """An image after the bundle's preprocessing: the classifier input and whether it looks like a frontal chest.

    ``grid`` maps the model grid (``tensor``'s rows and columns) back to the source image;
    ``source_image`` is the loaded image before the crop, for a picture of the result: one byte
    per source pixel (about 4 MiB for a 2,000 x 2,000 radiograph), kept while the image is.
    """

    tensor: torch.Tensor  # (3, rows, columns): image, lung probability, zeros
    lung_fraction: float  # share of pixels the U-Net calls lung (probability >= 0.5)
    lung_fields: LungFields | None = None  # the U-Net's lung fields, measured and judged
    appearance_residual: float = float("nan")  # of the chest appearance model (nan: no model)
    appearance_limit: float = float("inf")
    grid: ModelGrid | None = None  # model grid -> source pixel grid (None: geometry not recorded)
    source_image: np.ndarray | None = None  # (source rows, columns) uint8, the loaded image x 255

    @property
    def lung_probability(self) -> np.ndarray:
        """The U-Net's lung probability on the model grid, ``(rows, columns)`` float32 in [0, 1]."""
        return self.tensor[LUNG_CHANNEL].numpy()

    @property
    def not_chest_reason(self) -> str:
        """Why this does not look like a frontal chest radiograph; ``""`` when it does."""
        if self.lung_fields is not None and not self.lung_fields.plausible:
            return self.lung_fields.problem
        if self.appearance_residual > self.appearance_limit:
            return f"unlike a chest radiograph (appearance residual {self.appearance_residual:.0f}, limit {self.appearance_limit:.0f})"
        return ""

    @property
    def lung_fields_summary(self) -> str:
        """The lung-field measurements as short text (no patient data)."""
        return self.lung_fields.summary() if self.lung_fields is not None else "not measured"


@dataclass(frozen=True)
class Prediction:
    """The classifier's output for one image."""

    probability: float  # of COVID-19
    embedding: np.ndarray  # (embedding_dim,) float32, what the similar-study index is built on
    relevance: np.ndarray | None = None  # Grad-CAM of COVID-19, model grid (rows, columns) float32 in [0, 1]


class BundleAnalyser:
    """Preprocessing, U-Net lung channel, classifier and similar-study index of a bundle.

    Parameters
    ----------
    bundle_dir : str or pathlib.Path
        The bundle (``configs/common.yaml``, ``configs/inference_classifier.yaml``,
        ``configs/metadata.json``, ``models/``).
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    load_index : bool
        Load ``models/index`` (the similar-study index).
    load_appearance : bool
        Load ``models/chest_appearance.npz`` (the frontal-chest check); only its fitting
        script goes without.
    runtime : str
        What runs the U-Net and the classifier's forward pass (:data:`monai_app.runtime.RUNTIMES`):
        ``"pytorch"``, ``"onnxruntime"``, ``"openvino"`` or ``"auto"`` (the fastest installed);
        PyTorch when the one asked for cannot load (logged). Grad-CAM always runs on PyTorch.
    runtime_cache : str, pathlib.Path or None
        Folder of the exported networks (default :func:`monai_app.runtime.default_cache_dir`).
    lung_network : callable or None
        Run this (``(B, 1, 256, 256)`` -> logits) in place of the bundle's U-Net, e.g. the remote
        deployment's (:mod:`dicom_node.analyse.remote`); the runtime is then not loaded.
    load_classifier : bool
        Load the classifier's weights here; ``False`` where another process classifies
        (``predict`` then raises ``RuntimeError``). The identity is that of the bundle's files either way.

    Raises
    ------
    FileNotFoundError
        A config, weights file, the appearance model or the index is missing.
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        device: str = "auto",
        *,
        load_index: bool = True,
        load_appearance: bool = True,
        index_dir: str | Path | None = None,
        runtime: str = "pytorch",
        runtime_cache: str | Path | None = None,
        lung_network: Callable[[torch.Tensor], torch.Tensor] | None = None,
        load_classifier: bool = True,
    ) -> None:
        self.bundle_dir = Path(bundle_dir).resolve()
        self.device = resolve_device(device)
        parser = ConfigParser()
        parser.read_meta(self.bundle_dir / METADATA)
        parser.read_config([str(self.bundle_dir / name) for name in INFERENCE_CONFIGS])
        parser["bundle_root"] = str(self.bundle_dir)
        parser["device"] = f"$torch.device('{self.device}')"
        model_files = [Path(parser.get_parsed_content(key)) for key in ("cls_lung_model_file", "model_file")]
        for path in model_files:
            if not path.is_file():
                raise FileNotFoundError(f"the bundle has no weights file {path}")
        self.preprocessing = parser.get_parsed_content("preprocessing")
        if not isinstance(self.preprocessing.transforms[0], LoadChestXrayd):
            # prepare() keeps the loaded image by running the loader apart from the rest.
            raise TypeError(f"preprocessing must start with LoadChestXrayd, got {type(self.preprocessing.transforms[0]).__name__}")
        self.postprocessing = parser.get_parsed_content("postprocessing")
        network = parser.get_parsed_content("network")
        if not isinstance(network, CovidClassifier):
            raise TypeError(f"network must be a CovidClassifier, got {type(network).__name__}")
        # Without its weights (load_classifier=False) the network stays unused: predict() refuses.
        self.network = load_classifier_weights(network, model_files[1]).to(self.device) if load_classifier else network
        self.classifier_loaded = load_classifier
        # The calibration is in the postprocessing already; read here for the logs and the report.
        calibration = parser.get_parsed_content("calibration", default=None)
        if calibration is not None and not isinstance(calibration, Calibration):
            raise TypeError(f"calibration must be a monai_app.calibration.Calibration, got {type(calibration).__name__}")
        self.calibration: Calibration | None = calibration
        self.threshold = float(parser.get_parsed_content("threshold", default=DEFAULT_THRESHOLD))
        digests = [sha256_of(path) for path in model_files]
        self.identity = ModelIdentity(
            name=str(parser.get("_meta_#name", "bundle")),
            version=str(parser.get("_meta_#version", "0")),
            authors=str(parser.get("_meta_#authors", "unknown")),
            sha256=combined_sha256(digests),
            files=tuple((path.name, digest) for path, digest in zip(model_files, digests)),
            calibration=calibration.description if calibration is not None else "uncalibrated",
            calibration_sha256=calibration.sha256 if calibration is not None else "",
        )
        self.appearance: AppearanceModel | None = None
        if load_appearance:
            appearance_file = self.bundle_dir / APPEARANCE_MODEL
            if not appearance_file.is_file():
                raise FileNotFoundError(f"the bundle has no frontal-chest appearance model {appearance_file}")
            self.appearance = AppearanceModel.load(appearance_file)
            # Logged with the weights (it decides which images get a finding); the reports'
            # weights SHA-256 stays that of the two networks, which make the finding.
            self.identity = replace(
                self.identity, files=(*self.identity.files, (appearance_file.name, sha256_of(appearance_file)))
            )
        self.index: SimilarityIndex | None = None
        if load_index:
            self.index_dir = Path(index_dir) if index_dir is not None else self.bundle_dir / INDEX_DIR
            if not self.index_dir.is_dir():
                raise FileNotFoundError(f"no similar-study index {self.index_dir}")
            self.index = SimilarityIndex.load(self.index_dir)
        lung_transforms = [t for t in self.preprocessing.transforms if isinstance(t, LungProbabilityd)]
        self._runtime: NetworkRuntime | None = None
        bundle_lung = lung_transforms[0].network if lung_transforms and lung_network is None else None
        if lung_network is not None:
            for transform in lung_transforms:
                transform.use_network(lung_network)
        elif isinstance(bundle_lung, torch.nn.Module) and load_classifier:  # the bundle's U-Net
            self._runtime = load_runtime(
                runtime, bundle_lung, self.network, (digests[0], digests[1]), device=self.device,
                cache_dir=Path(runtime_cache) if runtime_cache is not None else None,
            )
        if self._runtime is not None:
            for transform in lung_transforms:
                transform.use_network(self._runtime_lung_logits)
        self.runtime = self._runtime.name if self._runtime is not None else "pytorch"
        """The runtime the U-Net and the classifier's forward pass run on."""
        self._lung_transforms = lung_transforms

    def lung_logits(self, x: torch.Tensor) -> torch.Tensor:
        """U-Net logits of a batch ``(B, 1, 256, 256)`` on whatever runs the lung channel here (what the
        Serve deployment answers a node's ``prepare`` with)."""
        if not self._lung_transforms:
            raise RuntimeError("the bundle's preprocessing has no lung channel")
        with torch.inference_mode():
            return self._lung_transforms[0].network(x)

    def _runtime_lung_logits(self, x: torch.Tensor) -> torch.Tensor:
        assert self._runtime is not None
        return torch.from_numpy(self._runtime.lung_logits(x.cpu().numpy()))

    @property
    def operating_point(self) -> OperatingPoint | None:
        """Validation sensitivity and specificity at the bundle's threshold (``None``: not recorded)."""
        return self.calibration.operating_point if self.calibration is not None else None

    def prepare(self, path: str | Path) -> PreparedImage:
        """Load and preprocess one image file (DICOM, PNG or JPEG) with the bundle's ``preprocessing``.

        Raises
        ------
        monai_app.errors.UndecodableImageError
            Possibly wrapped by MONAI in a ``RuntimeError``: see :func:`monai_app.errors.find_cause`.
        """
        # The bundle's own Compose, in two parts: the loader, then the rest on its output.
        loaded = self.preprocessing({"image": str(path)}, end=1)
        source_image = to_uint8(np.asarray(loaded["image"])[0])
        data = self.preprocessing(loaded, start=1)
        grid = grid_from_meta(getattr(data["image"], "meta", {}), data["image"].shape[-2:])
        tensor = torch.as_tensor(data["image"]).float()
        lung_fraction = float((tensor[LUNG_CHANNEL] >= 0.5).float().mean())
        image, lung = tensor[IMAGE_CHANNEL].numpy(), tensor[LUNG_CHANNEL].numpy()
        appearance = (float("nan"), float("inf"))
        if self.appearance is not None:
            appearance = (self.appearance.residual(image, lung), self.appearance.limit)
        return PreparedImage(
            tensor, lung_fraction, measure_lung_fields(lung), *appearance, grid=grid, source_image=source_image,
        )

    def predict(self, images: Sequence[PreparedImage], *, relevance: bool = False) -> list[Prediction]:
        """Classify a batch: COVID-19 probability (the bundle's ``postprocessing``, calibrated) and embedding.

        With ``relevance``, each prediction also carries the Grad-CAM map of COVID-19, from the
        feature maps of this same forward pass
        (:func:`monai_app.relevance.grad_cam_from_feature_maps`: only the small head is
        differentiated), which leaves probabilities and embeddings as they are without it.
        """
        if not images:
            return []
        if not self.classifier_loaded:
            raise RuntimeError("the classifier is not loaded in this process (load_classifier=False)")
        batch = torch.stack([image.tensor for image in images]).to(self.device)
        with torch.inference_mode():
            if self._runtime is not None:
                arrays = self._runtime.classify(batch.detach().cpu().numpy())
                feature_maps, embeddings, logits = (torch.from_numpy(a) for a in arrays)
            else:
                with layer_output(self.network) as outputs:
                    embeddings = self.network.embed(batch)
                feature_maps = outputs[-1]
                logits = self.network.head(embeddings)
            probabilities = [self.postprocessing({"pred": logit})["pred"] for logit in logits]
        maps: Sequence[np.ndarray | None] = [None] * len(images)
        if relevance:
            maps = list(grad_cam_from_feature_maps(
                self.network, feature_maps.to(self.device), (int(batch.shape[-2]), int(batch.shape[-1])), POSITIVE_CLASS))
        return [
            Prediction(float(p[POSITIVE_CLASS]), embedding.float().cpu().numpy().astype(np.float32), relevance_map)
            for p, embedding, relevance_map in zip(probabilities, embeddings, maps)
        ]

    def similar(self, embedding: np.ndarray, k: int, *, exclude_study: str = "") -> list[Neighbour]:
        """The ``k`` reference images nearest to ``embedding`` (none without an index or for k = 0),
        leaving out those of the study ``exclude_study`` (the query's own, once the index holds it)."""
        index = self.index  # one read: use_index() may swap it meanwhile
        if index is None or k == 0:
            return []
        found = index.query(embedding, k + SELF_MATCHES if exclude_study else k, search_k=SEARCH_K)
        return [n for n in found if n.item.study_instance_uid != exclude_study][:k]

    def use_index(self, index: SimilarityIndex) -> None:
        """Query ``index`` from now on (a rebuilt one: Annoy indexes are immutable); queries in flight finish on the old."""
        if self.index is not None and index.dimension != self.index.dimension:
            raise ValueError(f"index of dimension {index.dimension}, expected {self.index.dimension}")
        self.index = index

