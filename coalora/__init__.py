"""coalora: configuration-aware LoRA for quantized LLMs (CoA-LoRA), library part.

This package imports no Ray; ``orchestration/`` wires it onto a Ray cluster.
"""

__version__ = "0.1.0"
