"""The similar-study index: Annoy over classifier embeddings, and building it from a reference set."""
