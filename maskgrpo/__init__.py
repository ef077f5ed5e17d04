"""maskgrpo: GRPO for masked discrete diffusion models, text and images.

Importing the package registers every built-in component; `maskgrpo.registry` holds them.
"""

from . import backbones, estimators, metrics, rewards, samplers, tasks, tokenizers  # noqa: F401  (registration)
from . import worlds  # noqa: F401  (registration: the small worlds' tasks and detector; after the general modules they build on)
from .registry import REGISTRIES  # noqa: F401

__version__ = "0.1.0"
