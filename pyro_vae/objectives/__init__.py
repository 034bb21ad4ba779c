"""Training objectives over the target: the importance-weighted bound and the adversarial objectives."""
