"""diag: a training-diagnostics linter for deep learning."""

__version__ = "0.1.0"
