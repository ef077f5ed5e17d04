"""The small worlds that run on a CPU, one folder each (`arithmetic`, `shapes`): generator,
prompts, task, detector, vocabulary and training data. Importing this package registers their
components (`arithmetic` and `shapes` tasks, the `shapes` detector).

Worlds build on the general modules (registry, tasks, metrics, eval, tokenizers); no general
module imports a world.
"""

from . import arithmetic, shapes  # noqa: F401  (registration)
