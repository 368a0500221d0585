"""axon: publish model packages from a developer's cache to MLOS Core instances.

The public Python API mirrors the CLI: every ``axon`` command is one call here.
"""

from __future__ import annotations

__version__ = "0.1.0"

from axon.errors import AxonError
from modelpkg.manifest import FileEntry, Manifest
from modelpkg.refs import ModelRef

__all__ = ["AxonError", "FileEntry", "Manifest", "ModelRef", "__version__"]
