"""lamina-batch: run Lamina AI apps over a spreadsheet, safely (plan, start, poll, checkpoint, resume).

The public library API is listed in `__all__`; the `lamina-batch` command lives in `lamina_batch.cli`.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
