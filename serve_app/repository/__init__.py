"""Model repository: ``<root>/<model>/<version>/`` folders with a checksummed manifest."""

from serve_app.repository.loader import ModelRepository, VerifiedVersion
from serve_app.repository.manifest import FileEntry, Manifest
from serve_app.repository.publish import publish

__all__ = ["FileEntry", "Manifest", "ModelRepository", "VerifiedVersion", "publish"]
