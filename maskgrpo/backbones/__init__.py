from . import amused, hf, llada, transformer  # noqa: F401
