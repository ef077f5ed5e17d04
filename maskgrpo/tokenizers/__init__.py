from . import char, hf, magvit, vq, word  # noqa: F401
