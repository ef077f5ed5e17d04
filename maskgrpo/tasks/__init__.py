from . import arithmetic, jsonl  # noqa: F401
from .base import Example  # noqa: F401
