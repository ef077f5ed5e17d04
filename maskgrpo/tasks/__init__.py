from . import jsonl  # noqa: F401  (registration; the small worlds' tasks live in maskgrpo.worlds)
from .base import Example  # noqa: F401
