from . import hf, transformer  # noqa: F401
