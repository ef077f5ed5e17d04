"""`python -m maskgrpo ...` (what `accelerate launch -m maskgrpo` and `torchrun -m maskgrpo` run)."""

import sys

from .cli import main

sys.exit(main())
