"""Pictures of models, runs and results."""
