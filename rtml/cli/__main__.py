"""``python -m rtml.cli``: the same entry point as the ``rtml`` command."""

import sys

from rtml.cli import main

sys.exit(main())
