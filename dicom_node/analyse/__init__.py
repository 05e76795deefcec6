"""Stage 3, analyse: the inference worker takes received jobs to the models through one interface."""
