"""Exact EM baselines (PPCA, factor analysis, Gaussian mixtures, mixtures of Bernoullis) in the same units."""
