"""Model repository: ``<root>/<model>/<version>/`` folders with a checksummed manifest.

``manifest`` is the manifest schema, ``hashing`` the chunked sha256, ``loader`` the
verified read (partial or corrupt weights are never served), ``publish`` the atomic
write of a new version.

May import: only the top-level ``errors``, ``constants``, ``schema_base``.
"""

from serve_app.repository.loader import ModelRepository, VerifiedVersion
from serve_app.repository.manifest import FileEntry, Manifest
from serve_app.repository.publish import publish

__all__ = ["FileEntry", "Manifest", "ModelRepository", "VerifiedVersion", "publish"]
