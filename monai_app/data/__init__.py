"""Reading chest X-rays (DICOM, PNG, JPEG) and masks, manifests and datalists, sampling."""
