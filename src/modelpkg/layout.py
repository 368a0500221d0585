"""Where everything lives on disk and in a bucket: every name, drawn once.

A *models root* is a directory that MLOS Core instances read (an instance's models dir, a
shared directory, an NFS export); a *bucket prefix* is the same for S3. axon writes into
them, mlos-core writes and reads them, so both take their names from here::

    <models root>/
    ├── <ns>/<name...>/<version>/                  a published model: manifest.yaml + files
    │                                              (the upstream Go axon's layout)
    ├── <ns>/<name...>/.<version>.staging-<d16>/   a model being written by axon (filesystem,
    │   └── .axon-partial/<sha256>                 NFS, SSH): d16 = first 16 hex digits of the
    │                                              manifest's sha256, so a cut publish resumes;
    │                                              a partial file's size is its resume offset
    ├── <ns>/<name...>/.<version>.rollback-<id>/   the previous version an --atomic cluster
    │                                              switch keeps aside until every member
    │                                              committed
    ├── .../.<name>.old-<id>                       a tree moved aside to be deleted (where
    │                                              RENAME_EXCHANGE is unavailable)
    ├── .../.<name>.tmp-<id>                       a file being replaced (write + rename)
    └── .mlos/                                     mlos-core's own state, same filesystem so
        ├── blobs/sha256/<ab>/<sha256>             that versions are hard links to blobs:
        ├── partial/<sha256>                       verified blobs (0444); blobs being received
        ├── staging/<id>/                          a version built, fsynced, not yet visible
        ├── staging/mp-<id>/part-<n>               a one-shot upload's files, before they
        │                                          become blobs
        ├── previous/<ns>/<name...>/<version>/     the generation a re-publish replaced
        ├── trash/                                 trees being deleted
        ├── uploads/<upload id>.json               open resumable uploads
        ├── remote-tmp/                            blobs being pulled from S3
        ├── tenants/<tenant>/sent                  with tenants: the sha256s a tenant has sent
        ├── tenants/<tenant>/partial/<sha256>      for its open uploads; its blobs being received
        └── registry.json                          the registered models

    s3://<bucket>/<prefix>/
    ├── .blobs/sha256/<sha256>                     file contents, named by their sha256
    └── <ns>/<name...>/<version>/manifest.yaml     the version; written last (commit point)

Every ``.``-prefixed name is housekeeping: a model reference can never name one (see
:mod:`modelpkg.refs`), and a listing of models skips them.

This module is **standard library only and has no imports from this project**: the SSH
transport ships it, in front of :mod:`axon.transports.stagedir`, to hosts that have only a
``python3`` (>= 3.7), where it runs as part of one ``python3 -c`` program. Keep it so.
"""

from __future__ import annotations

import os

MANIFEST_NAME = "manifest.yaml"
DEFAULT_MODELS_DIR = "/var/lib/mlos/models"  # an MLOS Core instance's models root

# ---- a model directory and its siblings ---------------------------------------------------
PARTIAL_DIR = ".axon-partial"  # inside a staging dir: files being received
STAGING_TAG = "staging"
ROLLBACK_TAG = "rollback"
OLD_TAG = "old"
TMP_TAG = "tmp"
LEFTOVER_TAGS = (STAGING_TAG, OLD_TAG, TMP_TAG)  # what a crash can leave behind

# ---- mlos-core's state, under <models root>/.mlos -------------------------------------------
STATE_DIR = ".mlos"
BLOBS_DIR = "blobs/sha256"
PARTIAL_BLOBS_DIR = "partial"
STAGING_DIR = "staging"
ONESHOT_PREFIX = "mp-"  # staging/mp-<id>/: the files of one one-shot (multipart) upload
ONESHOT_PART_PREFIX = "part-"  # staging/mp-<id>/part-<n>: the n-th file of it
PREVIOUS_DIR = "previous"
TRASH_DIR = "trash"
UPLOADS_DIR = "uploads"
REMOTE_TMP_DIR = "remote-tmp"
TENANTS_DIR = "tenants"  # tenants/<tenant>/: what one tenant has sent (with --tokens)
TENANT_SENT_FILE = "sent"
TENANT_PARTIAL_DIR = "partial"
REGISTRY_FILE = "registry.json"

# ---- S3 ---------------------------------------------------------------------------------
S3_BLOBS = ".blobs/sha256"


def sibling(name: str, tag: str, suffix: str) -> str:
    """``.<name>.<tag>-<suffix>``: a hidden sibling of ``name`` (same filesystem, so the
    rename that later replaces ``name`` is atomic)."""
    return f".{name}.{tag}-{suffix}"


def sibling_prefix(name: str, tag: str) -> str:
    """The start of every :func:`sibling` of ``name`` with ``tag``."""
    return f".{name}.{tag}-"


def is_leftover(name: str) -> bool:
    """True for the staging/old/tmp siblings an interrupted write can leave behind."""
    return name.startswith(".") and any(f".{tag}-" in name for tag in LEFTOVER_TAGS)


def final_dir(root: str, rel: str) -> str:
    """``<root>/<ns>/<name...>/<version>`` for the posix relative path ``rel``."""
    return os.path.join(root, *rel.split("/"))


def staging_dir(root: str, rel: str, digest: str) -> str:
    """The deterministic staging dir of one (model, manifest digest)."""
    parent, version = os.path.split(final_dir(root, rel))
    return os.path.join(parent, sibling(version, STAGING_TAG, digest[:16]))


def overlapping_model(root: str, rel: str) -> str | None:
    """The model directory (posix, relative to ``root``) that the model at ``rel`` would overlap.

    A name may hold ``/``, so two references can map to nested directories: ``n/b@v1`` lives
    at ``n/b/v1/`` and ``n/b/v1@x`` at ``n/b/v1/x/``. Writing either would replace or write
    into the other, so a writer refuses ``rel`` when this answers. A model directory is one
    that holds a manifest; ``rel`` itself holding one is the same model, not an overlap.
    Housekeeping (``.``-prefixed) directories are skipped.
    """
    parts = rel.split("/")
    for depth in range(3, len(parts)):  # the shortest model dir is <ns>/<name>/<version>
        above = "/".join(parts[:depth])
        if os.path.isfile(os.path.join(final_dir(root, above), MANIFEST_NAME)):
            return above
    here = final_dir(root, rel)
    if not os.path.isdir(here) or os.path.isfile(os.path.join(here, MANIFEST_NAME)):
        return None
    for dirpath, dirnames, filenames in os.walk(here):
        if MANIFEST_NAME in filenames:
            return os.path.relpath(dirpath, root).replace(os.sep, "/")
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return None
