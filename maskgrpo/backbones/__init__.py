from . import amused, hf, transformer  # noqa: F401
