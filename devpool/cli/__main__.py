"""``python -m devpool.cli``: the same as the ``devpool`` command."""

import sys

from .main import main

sys.exit(main())
