"""Flax NNX expert architectures: ResNet family and a YOLOv5-like detector."""

from coserve_jax.models.build import abstract_state, build_model, eval_mode, param_bytes, param_count
from coserve_jax.models.host_init import host_init_state
from coserve_jax.models.registry import named_spec, resnet101, tiny_resnet, tiny_yolo, yolov5l, yolov5m
from coserve_jax.models.spec import ArchSpec

__all__ = [
    "ArchSpec", "abstract_state", "build_model", "eval_mode", "host_init_state", "named_spec", "param_bytes",
    "param_count", "resnet101", "tiny_resnet", "tiny_yolo", "yolov5l", "yolov5m",
]
