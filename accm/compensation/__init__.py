"""ACCM compensation: caption candidates from the discarded tokens, a selector, the prompt splice."""
