"""Named architecture specs: paper-scale (ResNet101, YOLOv5m/l) and tiny demo variants."""

from __future__ import annotations

from coserve_jax.models.spec import ArchSpec


def resnet101(num_outputs: int = 1000, input_shape: tuple[int, int, int] = (224, 224, 3)) -> ArchSpec:
    """torchvision ResNet-101 (44.5M parameters at 1000 classes)."""
    return ArchSpec(
        name="resnet101", family="resnet", input_shape=input_shape, num_outputs=num_outputs,
        block="bottleneck", stage_depths=(3, 4, 23, 3), stage_widths=(64, 128, 256, 512),
        stem="imagenet", stem_width=64, stem_stride=2,
    )


def yolov5m(num_outputs: int = 80, input_shape: tuple[int, int, int] = (640, 640, 3)) -> ArchSpec:
    """YOLOv5m v6.0 (21.2M parameters at 80 classes)."""
    return ArchSpec(name="yolov5m", family="yolo", input_shape=input_shape, num_outputs=num_outputs,
                    depth_multiple=0.67, width_multiple=0.75)


def yolov5l(num_outputs: int = 80, input_shape: tuple[int, int, int] = (640, 640, 3)) -> ArchSpec:
    """YOLOv5l v6.0 (46.5M parameters at 80 classes)."""
    return ArchSpec(name="yolov5l", family="yolo", input_shape=input_shape, num_outputs=num_outputs,
                    depth_multiple=1.0, width_multiple=1.0)


def tiny_resnet(input_shape: tuple[int, int, int] = (32, 32, 3), num_outputs: int = 2,
                name: str = "resnet_tiny") -> ArchSpec:
    """Demo classification expert: 3 basic-block stages, stride-2 stem (~0.4 MB fp32)."""
    return ArchSpec(name=name, family="resnet", input_shape=input_shape, num_outputs=num_outputs,
                    block="basic", stage_depths=(1, 1, 1), stage_widths=(16, 32, 80),
                    stem="small", stem_width=16, stem_stride=2)


def tiny_yolo(input_shape: tuple[int, int, int] = (32, 32, 3), num_outputs: int = 3,
              name: str = "yolo_tiny") -> ArchSpec:
    """Demo detection expert: YOLOv5 layout at depth 0.33, width 0.125 (~2 MB fp32)."""
    return ArchSpec(name=name, family="yolo", input_shape=input_shape, num_outputs=num_outputs,
                    depth_multiple=0.33, width_multiple=0.125)


NAMED = {"resnet101": resnet101, "yolov5m": yolov5m, "yolov5l": yolov5l,
         "resnet_tiny": tiny_resnet, "yolo_tiny": tiny_yolo}


def named_spec(name: str) -> ArchSpec:
    """The default spec registered under ``name``."""
    try:
        return NAMED[name]()
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {sorted(NAMED)}") from None
