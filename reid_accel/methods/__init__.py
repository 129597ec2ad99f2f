"""Training methods the engine drives: one file per method, one line per method in `METHODS`."""

from reid_accel.methods.base import BuildInputs, Embed, GroupLoss, Method, MethodParts, is_diagnostic
from reid_accel.methods.cail import CAIL
from reid_accel.methods.camera_proxy import CameraProxy

METHODS: dict[str, type[Method]] = {
    "cail": CAIL,
    "camera_proxy": CameraProxy,
}

__all__ = [
    "METHODS",
    "CAIL",
    "BuildInputs",
    "CameraProxy",
    "Embed",
    "GroupLoss",
    "Method",
    "MethodParts",
    "is_diagnostic",
]
