"""`python -m lamina_batch`: the same entry point as the `lamina-batch` command."""

import sys

from lamina_batch.cli import console

sys.exit(console())
