from . import low_confidence  # noqa: F401
from .base import Rollout  # noqa: F401
