"""edgeport: Hugging Face models to validated, self-verifying bundles for edge devices."""

__version__ = "0.1.0"
