"""The frontal-chest checks as pure functions: lung-field rules on synthetic masks, the appearance model."""

from __future__ import annotations

import numpy as np
import pytest

from monai_app.inference import APPEARANCE_MODEL
from monai_app.transforms.chest_appearance import AppearanceModel, appearance_vector, fit_appearance, residual_limit
from monai_app.transforms.lung_fields import measure_lung_fields
from testkit.shared_data import REPO_ROOT

SIZE = 224


def _ellipse(mask: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.mgrid[:SIZE, :SIZE] / SIZE
    mask[((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1] = 1.0
    return mask


def _two_lungs() -> np.ndarray:
    lungs = _ellipse(np.zeros((SIZE, SIZE)), 0.45, 0.30, 0.32, 0.13)
    return _ellipse(lungs, 0.45, 0.70, 0.32, 0.13)


def test_two_lung_fields_pass() -> None:
    fields = measure_lung_fields(_two_lungs())
    assert fields.plausible, fields.problem
    assert fields.left is not None and fields.right is not None
    assert fields.left.x == pytest.approx(0.30, abs=0.01) and fields.right.x == pytest.approx(0.70, abs=0.01)
    assert "left 13% at (0.30, 0.45)" in fields.summary()


def test_two_fields_fused_at_the_apex_pass() -> None:
    lungs = _two_lungs()
    lungs[int(0.16 * SIZE):int(0.2 * SIZE), int(0.3 * SIZE):int(0.7 * SIZE)] = 1.0  # a bridge across the midline
    assert measure_lung_fields(lungs).plausible


@pytest.mark.parametrize("what, mask, problem", [
    ("one blob", _ellipse(np.zeros((SIZE, SIZE)), 0.45, 0.5, 0.3, 0.3), "one field across the midline"),
    ("one lung", _ellipse(np.zeros((SIZE, SIZE)), 0.45, 0.3, 0.3, 0.13), "one field on one side"),
    ("tiny blobs", _ellipse(_ellipse(np.zeros((SIZE, SIZE)), 0.45, 0.3, 0.06, 0.05), 0.45, 0.7, 0.06, 0.05),
     "a field of 0.9%, 2% needed"),
    ("a blob at each edge", _ellipse(_ellipse(np.zeros((SIZE, SIZE)), 0.45, 0.04, 0.3, 0.1), 0.45, 0.96, 0.3, 0.1),
     "a field at the edge of the picture"),
    ("fields at the bottom", _ellipse(_ellipse(np.zeros((SIZE, SIZE)), 0.88, 0.3, 0.1, 0.13), 0.88, 0.7, 0.1, 0.13),
     "fields not in the upper-middle of the picture"),
    ("nothing", np.zeros((SIZE, SIZE)), "no lung field"),
])
def test_what_is_not_two_lungs_fails(what: str, mask: np.ndarray, problem: str) -> None:
    assert measure_lung_fields(mask).problem == problem, what


def test_28_percent_of_scattered_noise_fails() -> None:
    noise = (np.random.default_rng(7).random((SIZE, SIZE)) < 0.28).astype(float)
    fields = measure_lung_fields(noise)
    assert fields.lung_fraction == pytest.approx(0.28, abs=0.01)
    assert not fields.plausible, fields.summary()


def test_noise_over_two_lungs_is_judged_by_where_the_lung_is() -> None:
    rng = np.random.default_rng(3)
    lungs = _two_lungs()
    lungs[rng.random((SIZE, SIZE)) < 0.02] = 1.0  # specks the U-Net leaves in the background
    assert measure_lung_fields(lungs).plausible
    lungs[rng.random((SIZE, SIZE)) < 0.4] = 1.0  # but most of the lung is scattered
    assert not measure_lung_fields(lungs).plausible


def test_the_appearance_model_reconstructs_what_it_was_fitted_on_and_not_the_rest() -> None:
    rng = np.random.default_rng(0)
    lungs = _two_lungs()
    chests = [appearance_vector(np.clip(0.6 - 0.4 * lungs + rng.normal(0, 0.02, lungs.shape) + s, 0, 1), lungs)
              for s in rng.uniform(-0.1, 0.1, 40)]
    model = fit_appearance(chests, components=3)
    model = fit_appearance(chests, components=3, limit=residual_limit(model.residual_of(v) for v in chests))
    other = np.zeros((SIZE, SIZE))
    other[:, :SIZE // 3] = 1.0  # bright band, "lung" where the chest's mediastinum is
    assert model.residual(0.65 - 0.4 * lungs, lungs) <= model.limit
    assert model.residual(other, 1 - lungs) > 10 * model.limit


def test_appearance_vector_needs_whole_blocks() -> None:
    with pytest.raises(ValueError, match="blocks"):
        appearance_vector(np.zeros((30, 30)), np.zeros((30, 30)), grid=28)


def test_the_shipped_appearance_model_loads_and_saves_unchanged(tmp_path) -> None:
    model = AppearanceModel.load(REPO_ROOT / "bundle" / APPEARANCE_MODEL)
    assert model.components.shape == (30, 2 * 28 * 28) and 30 < model.limit < 100
    model.save(tmp_path / "m.npz")
    again = AppearanceModel.load(tmp_path / "m.npz")
    assert again.limit == model.limit and np.allclose(again.components, model.components)
