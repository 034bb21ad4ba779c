"""Models and their parts: priors, likelihoods, nets, the registries, the stock VAE, and the target: per-datapoint ``log p(x, z)`` and ``log q(z | x)`` of any Pyro model and guide."""
