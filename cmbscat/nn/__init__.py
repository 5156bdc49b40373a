"""Trainable spherical layers and models (PyTorch)."""
