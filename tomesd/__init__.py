"""tomesd: token merging for faster transformer inference, with no retraining."""

__version__ = "0.2.0"
