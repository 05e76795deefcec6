"""Image transforms: normalisation, CLAHE, MONAI dictionary transforms of the bundle."""
