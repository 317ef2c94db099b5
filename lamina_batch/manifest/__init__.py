"""The SQLite manifest, a batch's checkpoint: runs, their state transitions (only the moves `lifecycle.MOVES`
allows), webhook deliveries; schema migrations, the one-writer lock, group commit, and `merge_manifests` for shard
manifests. It never holds secrets.
"""

from __future__ import annotations

from pathlib import Path

from lamina_batch.times import utcnow_iso

from .api import Manifest
from .commit import GROUP_COMMIT_DELAY, Durability
from .merge import DroppedRun, MergeSummary, merge_manifests
from .records import Transition
from .schema import SCHEMA_VERSION

__all__ = [
    "GROUP_COMMIT_DELAY",
    "MANIFEST_SUFFIX",
    "SCHEMA_VERSION",
    "DroppedRun",
    "Durability",
    "Manifest",
    "MergeSummary",
    "Transition",
    "default_manifest_path",
    "merge_manifests",
    "utcnow_iso",
]

MANIFEST_SUFFIX = ".lamina.sqlite"


def default_manifest_path(pipeline_path: Path) -> Path:
    """`<pipeline stem>.lamina.sqlite` beside the pipeline file."""
    return pipeline_path.with_name(pipeline_path.stem + MANIFEST_SUFFIX)
