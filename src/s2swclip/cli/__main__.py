"""``python -m s2swclip.cli``: the command line."""

import sys

from .main import main

sys.exit(main())
