from . import image, low_confidence  # noqa: F401
from .base import Rollout  # noqa: F401
