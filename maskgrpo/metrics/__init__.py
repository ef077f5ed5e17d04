from . import math as _math  # noqa: F401  (registers math_accuracy)
from . import clip_score, geneval  # noqa: F401  (registration; geneval registers the detector backends)
