"""tguide: transferability-guided fine-tuning on PyTorch Lightning."""

__version__ = "0.1.0"
