from . import arithmetic, jsonl, shapes_task  # noqa: F401
from .base import Example  # noqa: F401
