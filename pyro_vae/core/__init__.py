"""Foundations with no knowledge of models: errors, numerics (``ops``, ``stats``), units, progress bars, recorded settings."""
