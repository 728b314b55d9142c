"""The model registry: versions with their metadata and metrics, and a ``current`` pointer, in a folder or on S3.

One implementation of the versioning (register, promote, rollback, the promotion history, live acceptance:
:mod:`~shoeseg_services.registry.rules`) over one of two stores, picked from the root: a local folder (the
default, :mod:`~shoeseg_services.registry.local_store`) or an S3 bucket prefix (``s3://bucket/prefix``,
:mod:`~shoeseg_services.registry.s3_store`); :mod:`~shoeseg_services.registry.store` is what the rules ask of a
store. Both stores give the same guarantees: a version appears whole or not at all, the ``current`` pointer
changes atomically, every reader (each backend replica polls it) sees a promotion without a restart, and a
damaged version is skipped, not fatal. Each store's module says how.

Everything a caller needs is here::

    from shoeseg_services.registry import ModelRegistry, RegistryError
"""

from shoeseg_services.registry.local_store import META_NAME
from shoeseg_services.registry.rules import ModelRegistry, ModelVersion, is_s3_root
from shoeseg_services.registry.s3_store import S3_META_NAME, S3_PROMOTE_ATTEMPTS
from shoeseg_services.registry.store import CHECKPOINT_NAME, TMP_PREFIX, RegistryError

__all__ = [
    "CHECKPOINT_NAME",
    "META_NAME",
    "S3_META_NAME",
    "S3_PROMOTE_ATTEMPTS",
    "TMP_PREFIX",
    "ModelRegistry",
    "ModelVersion",
    "RegistryError",
    "is_s3_root",
]
