"""A small, readable PyTorch language-model library: decoder, encoder, GGUF loading, generation, training."""
