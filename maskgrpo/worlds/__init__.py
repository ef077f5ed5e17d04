"""The small worlds that run on a CPU, one folder each (`arithmetic`, `chain`, `shapes`):
generator, prompts, task, detector, vocabulary and training data. Importing this package
registers their components (`arithmetic`, `chain` and `shapes` tasks, the `shapes` detector).

Worlds build on the general modules (registry, tasks, metrics, eval, tokenizers); no general
module imports a world.
"""

from . import arithmetic, chain, shapes  # noqa: F401  (registration)
