"""Training, evaluation and checkpointing for one cell."""
