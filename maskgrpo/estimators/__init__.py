from . import masking  # noqa: F401
from .masking import MaskedView  # noqa: F401
