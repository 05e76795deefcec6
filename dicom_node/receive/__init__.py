"""Stage 1, receive: the DICOM listener (C-ECHO, C-STORE), checking each instance before it is stored."""
