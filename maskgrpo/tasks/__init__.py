from . import arithmetic  # noqa: F401
from .base import Example  # noqa: F401
