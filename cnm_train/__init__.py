"""cnm_train: the CNM network in PyTorch, its data loading, losses, training loop and checkpoints.

Preprocessing, spans and metrics come from cnm_runtime; nothing here re-implements them.
"""
