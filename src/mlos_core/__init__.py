"""mlos-core: a Python MLOS Core server that receives, stores and registers models."""

__version__ = "0.1.0"
