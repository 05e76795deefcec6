"""Image and model code of the chest X-ray AI node, referenced by the MONAI bundle's configs."""
