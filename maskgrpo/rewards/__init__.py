from . import diversity, image, math  # noqa: F401
