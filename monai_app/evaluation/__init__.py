"""Evaluation reports and figures (scikit-learn, matplotlib): never imported by the serving node."""
