"""Run machinery: configuration, building a run's objects from it, checkpoints and run directories."""
