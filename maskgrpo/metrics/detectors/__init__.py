"""Detector backends for GenEval-style scoring (registered in `maskgrpo.registry.detectors`).

The shapes world's exact detector lives with its world (`maskgrpo.worlds.shapes.detector`).
"""

from . import torchvision  # noqa: F401  (registration)
from .base import Detection, DetectorBackend  # noqa: F401
