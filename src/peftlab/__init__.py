"""peftlab: parameter-efficient fine-tuning of foundation models, measured."""

__version__ = "0.1.0"
