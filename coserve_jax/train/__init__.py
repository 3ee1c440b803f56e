"""optax training of demo experts (vmapped over stacked parameters)."""

from coserve_jax.train.trainer import TrainSettings, default_group_size, train_experts

__all__ = ["TrainSettings", "default_group_size", "train_experts"]
