"""accm: compiled edge deployment of LLaVA-style VLMs with aggressive vision-token pruning."""

__version__ = "0.1.0"
