"""Relevance maps of the COVID-19 classifier: Grad-CAM on the ResNet50's last block, and its main region.

:class:`GradCamRelevance` wraps MONAI's :class:`monai.visualize.GradCAM` (Selvaraju et al.
2017) for the positive class of :class:`~monai_app.networks.classifier.CovidClassifier`. The
target is ``backbone.layer4``, whose output is a 7 x 7 grid of 2048 features on a 224 x 224
input; the map is upsampled bilinearly to the input grid and scaled to [0, 1] per image.

:func:`grad_cam_from_feature_maps` computes the same maps from that layer's output alone, as
the classification's forward pass (on any runtime) leaves it: the backbone ends in a global
average pool, so the gradient of the logit at each of the h x w locations is the gradient at the
pooled features divided by h x w, and only the head (three small layers) is differentiated. The
node uses it, so a relevance map costs no second pass through the ResNet50; the full pass of
:class:`GradCamRelevance` stays as the reference it is tested against (``tests/unit/test_relevance.py``).

:func:`monai_app.transforms.regions.relevance_region` turns a map into one closed outline,
"the region the model looked at" (numpy only, so the torch-free worker can use it).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from monai.visualize import GradCAM
from torch import nn
from torch.nn import functional as F

from monai_app.labels import POSITIVE_CLASS
from monai_app.networks.classifier import CovidClassifier

TARGET_LAYER = "backbone.layer4"
"""The ResNet50's last residual block: the finest features that still see the whole chest."""


def unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of a batch ``(B, ...)`` linearly to [0, 1], its maximum to 1; flat maps become 0.

    MONAI's default Grad-CAM postprocessing maps the maximum to 0 (inverted); this one keeps
    "1 = most relevant".
    """
    flat = maps.detach().reshape(maps.shape[0], -1).float()
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(flat))
    return scaled.reshape(maps.shape)


def _leaf_output(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor | None:
    """Forward hook: the target layer's output as a leaf that requires grad (only when grad is on).

    With the parameters frozen, autograd then records nothing before the target layer, and the
    backward pass runs through the head alone: the Grad-CAM costs about one forward pass.
    Under ``no_grad``/``inference_mode`` (``predict``) it does nothing.
    """
    if not torch.is_grad_enabled():
        return None
    return output.detach().requires_grad_(True)


@contextmanager
def _frozen(network: nn.Module) -> Iterator[None]:
    """Parameters without ``requires_grad`` for the duration, restored after (values untouched)."""
    flags = [(parameter, parameter.requires_grad) for parameter in network.parameters()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


class GradCamRelevance:
    """Grad-CAM maps of a classifier for one class, on batches of its input.

    The hooks are registered once, on construction (MONAI's ``GradCAM`` keeps them for the
    network's lifetime): a forward and a backward hook of MONAI and a forward hook that makes the
    target's output the start of the backward graph. Outside gradient mode they only store the
    target layer's last output (dropped by :meth:`clear`), so other forward passes are not slowed.
    Not thread-safe: one call at a time per network.

    Parameters
    ----------
    network : torch.nn.Module
        The classifier (:class:`~monai_app.networks.classifier.CovidClassifier`); run in eval
        mode, its parameters are neither changed nor left with gradients.
    class_index : int
        The class whose logit is explained (default COVID-19).
    target_layer : str
        Name of the module whose output is weighted (``network.named_modules()``).

    Raises
    ------
    ValueError
        If ``network`` has no module ``target_layer``.
    """

    def __init__(self, network: nn.Module, class_index: int = POSITIVE_CLASS, target_layer: str = TARGET_LAYER) -> None:
        if target_layer not in dict(network.named_modules()):
            raise ValueError(f'network has no module "{target_layer}"')
        self.network = network
        self.class_index = int(class_index)
        self._cam = GradCAM(nn_module=network, target_layers=target_layer, postprocessing=unit_range)
        # After MONAI's hooks: MONAI stores the plain output, the backward hook sees the leaf.
        network.get_submodule(target_layer).register_forward_hook(_leaf_output)

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        """Relevance maps of a batch ``(B, C, rows, columns)``.

        Returns
        -------
        numpy.ndarray
            ``(B, rows, columns)`` float32 in [0, 1], 1 at each map's maximum; all zeros where
            no location raises the class's logit.

        Raises
        ------
        RuntimeError
            Under ``torch.inference_mode``, which cannot record gradients.
        """
        if torch.is_inference_mode_enabled():
            raise RuntimeError("Grad-CAM needs gradients: call it outside torch.inference_mode")
        try:
            with _frozen(self.network), torch.enable_grad(), warnings.catch_warnings():
                # Intended: no input requires grad, so the backward hook fires on the target's output.
                warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
                maps = self._cam(batch, class_idx=self.class_index)
        finally:
            self.clear()
        return maps[:, 0].detach().float().cpu().numpy()

    def clear(self) -> None:
        """Drop the activations, gradients and score MONAI's hooks keep from the last pass."""
        hooks = self._cam.nn_module
        hooks.activations.clear()
        hooks.gradients.clear()
        hooks.score = None


@contextmanager
def layer_output(network: nn.Module, layer: str = TARGET_LAYER) -> Iterator[list[torch.Tensor]]:
    """Within: each forward pass's output of ``layer`` (default ``backbone.layer4``), appended to the yielded list."""
    outputs: list[torch.Tensor] = []
    handle = network.get_submodule(layer).register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


def grad_cam_from_feature_maps(
    network: CovidClassifier, feature_maps: torch.Tensor, input_size: tuple[int, int], class_index: int = POSITIVE_CLASS,
) -> np.ndarray:
    """Grad-CAM of ``backbone.layer4`` from its output: what :class:`GradCamRelevance` gives, without a second forward pass.

    Parameters
    ----------
    network : CovidClassifier
        The classifier, in eval mode: its head alone is run and differentiated (``embed_pooled``, ``head``); its parameters are
        neither changed nor left with gradients.
    feature_maps : torch.Tensor
        ``(B, 2048, h, w)``: ``backbone.layer4``'s output for the batch, from any runtime.
    input_size : tuple of int
        ``(rows, columns)`` of the classifier's input, the grid the maps are upsampled to.
    class_index : int
        The class whose logit is explained (default COVID-19).

    Returns
    -------
    numpy.ndarray
        ``(B, rows, columns)`` float32 in [0, 1], as :meth:`GradCamRelevance.__call__`.
    """
    maps = feature_maps.detach().float().clone()  # a plain tensor, also when made under inference_mode
    rows, columns = maps.shape[-2:]
    with _frozen(network), torch.enable_grad():
        pooled = maps.mean(dim=(2, 3)).requires_grad_(True)  # the backbone's global average pool
        logits = network.head(network.embed_pooled(pooled))
        (pooled_gradient,) = torch.autograd.grad(logits[:, class_index].sum(), pooled)
    # The pool spreads the gradient evenly: each location's gradient is the pooled one / (h w),
    # which is also its mean over the locations (Grad-CAM's weight of each feature map).
    weights = (pooled_gradient / (rows * columns))[:, :, None, None]
    activation = F.relu((weights * maps).sum(dim=1, keepdim=True))
    upsampled = F.interpolate(activation, size=tuple(input_size), mode="bilinear", align_corners=False)
    return unit_range(upsampled)[:, 0].float().cpu().numpy()
