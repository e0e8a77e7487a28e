"""`python -m app.cli` is the `agentsched` command."""

import sys

from app.cli import main

sys.exit(main())
