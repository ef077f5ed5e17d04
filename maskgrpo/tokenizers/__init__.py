from . import char, hf  # noqa: F401
