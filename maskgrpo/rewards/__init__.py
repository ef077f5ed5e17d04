from . import image, math  # noqa: F401
