"""Run-level jobs: training (``fit``), evaluating, comparing and the model-family table."""
