"""minilens: a pure-NumPy forward pass with the logit lens."""
