"""Datasets, safe file reading and the transforms that put raw values into a model's space."""
