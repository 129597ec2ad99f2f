"""Training methods the engine drives: one file per method, one line per method in `METHODS`."""

from reid_accel.methods.base import Embed, GroupLoss, Method, MethodParts, is_diagnostic
from reid_accel.methods.cail import CAIL

METHODS: dict[str, type[Method]] = {
    "cail": CAIL,
}

__all__ = ["METHODS", "CAIL", "Embed", "GroupLoss", "Method", "MethodParts", "is_diagnostic"]
