"""`python -m edgeface`: the `edgeface` command line."""

import sys

from edgeface.cli import main

sys.exit(main())
