"""xtalign: exact tokenizer alignment and cross-tokenizer knowledge distillation."""

__version__ = "0.1.0"
