"""sft_sweeps: which loss mask should I use when fine-tuning a chat model on multi-turn conversations?"""

__version__ = "0.1.0"
