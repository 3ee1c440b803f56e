"""Request bodies to images: ``.npy`` bytes or PNG, checked; errors carry an HTTP status.

No Ray, no JAX: the ingress decodes, the replica checks the image against the expert.
"""

from __future__ import annotations

import io

import numpy as np

NPY_MAGIC = b"\x93NUMPY"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class BadRequest(ValueError):
    """A request the server will not serve; ``status`` is the HTTP status (4xx), the message the reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def decode_image(body: bytes, content_type: str | None = None) -> np.ndarray:
    """A float32 ``[H, W, C]`` image in [0, 1] from ``.npy`` bytes (float32 as sent; uint8
    scaled by 1/255) or a PNG (8-bit, gray or RGB; scaled by 1/255)."""
    if not body:
        raise BadRequest(400, "empty body: send the image as .npy bytes or a PNG")
    ct = (content_type or "").split(";")[0].strip().lower()
    if body.startswith(NPY_MAGIC) or ct in ("application/x-npy", "application/npy"):
        try:
            arr = np.load(io.BytesIO(body), allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - any parse failure is the client's bad body
            raise BadRequest(400, f"corrupt .npy body: {e}") from None
        if not isinstance(arr, np.ndarray):
            raise BadRequest(400, "the .npy body must hold one array")
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        return arr
    if body.startswith(PNG_MAGIC) or ct == "image/png":
        from PIL import Image

        try:
            with Image.open(io.BytesIO(body)) as im:
                im.load()
                if im.mode not in ("L", "RGB", "RGBA"):
                    raise BadRequest(415, f"PNG mode {im.mode} not supported: send 8-bit gray or RGB")
                arr = np.asarray(im.convert("RGB") if im.mode == "RGBA" else im)
        except BadRequest:
            raise
        except Exception as e:  # noqa: BLE001 - any decode failure is the client's bad body
            raise BadRequest(400, f"corrupt PNG body: {e}") from None
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return arr.astype(np.float32) / 255.0
    raise BadRequest(415, f"unsupported body (Content-Type {content_type!r}): send .npy bytes "
                          "(application/x-npy) or a PNG (image/png)")


def check_image(image: np.ndarray, expected_shape: tuple[int, ...]) -> np.ndarray:
    """The image as the expert takes it (float32, ``expected_shape``), or BadRequest(422).
    A one-channel PNG for a three-channel expert (or the reverse) is converted."""
    if image.dtype != np.float32:
        raise BadRequest(422, f"image dtype {image.dtype}: expected float32 (or uint8 / PNG)")
    if image.ndim == 3 and len(expected_shape) == 3 and image.shape[:2] == tuple(expected_shape[:2]):
        if image.shape[2] == 3 and expected_shape[2] == 1:
            image = image.mean(axis=2, keepdims=True, dtype=np.float32)
        elif image.shape[2] == 1 and expected_shape[2] == 3:
            image = np.repeat(image, 3, axis=2)
    if tuple(image.shape) != tuple(expected_shape):
        raise BadRequest(422, f"image shape {tuple(image.shape)}: expected {tuple(expected_shape)}")
    if not np.all(np.isfinite(image)):
        raise BadRequest(422, "image has NaN or inf values")
    return np.ascontiguousarray(image)


def encode_npy(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, image, allow_pickle=False)
    return buf.getvalue()


def encode_png(image: np.ndarray) -> bytes:
    """A float image in [0, 1] as an 8-bit PNG (gray for one channel)."""
    from PIL import Image

    arr = np.clip(np.round(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
