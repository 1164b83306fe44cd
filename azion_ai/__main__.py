"""``python -m azion_ai``: the ``azion-ai`` command line, for environments without its script."""

import sys

from ._cli import main

sys.exit(main())
