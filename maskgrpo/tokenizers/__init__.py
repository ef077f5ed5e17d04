from . import char, hf, vq, word  # noqa: F401
