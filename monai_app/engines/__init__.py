"""Training-loop pieces for MONAI engines."""
