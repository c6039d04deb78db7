"""hummingml: audio feature extraction and HummingLM training on Ray."""

__version__ = "0.1.0"
