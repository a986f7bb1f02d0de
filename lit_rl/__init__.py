"""lit_rl: reinforcement-learning fine-tuning of language models on PyTorch Lightning."""

__version__ = "0.1.0"
