"""``python -m descore`` and ``accelerate launch -m descore``: the same command line as ``descore``."""

import sys

from .cli import main

sys.exit(main())
