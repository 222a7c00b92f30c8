"""``python -m kvrl``: the same as the ``kvrl`` command."""

import sys

from kvrl.cli import main

sys.exit(main())
