"""ImageIQ: train, register and serve torchvision image classifiers."""

__version__ = "0.1.0"
