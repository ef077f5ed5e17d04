"""Detector backends for GenEval-style scoring (registered in `maskgrpo.registry.detectors`)."""

from . import shapes, torchvision  # noqa: F401  (registration)
from .base import GENEVAL_COLORS, Detection, DetectorBackend  # noqa: F401
