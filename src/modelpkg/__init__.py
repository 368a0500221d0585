"""modelpkg: the model package contract that axon and mlos-core share.

Both sides agree on what a model package is and how it lies on disk or in a bucket; this
package says it once, below both (neither imports the other):

* :mod:`modelpkg.refs`: model references, ``namespace/name[@version]``, and their directory;
* :mod:`modelpkg.manifest`: ``manifest.yaml`` (read lenient, write strict) and path safety;
* :mod:`modelpkg.layout`: every directory and file name of a models root, mlos-core's state
  and the S3 layout, drawn once (standard library only: it is shipped to SSH hosts);
* :mod:`modelpkg.atomic`: stage -> fsync -> rename, ``RENAME_EXCHANGE``;
* :mod:`modelpkg.s3`: a bucket + prefix in the S3 layout (boto3, imported lazily);
* :mod:`modelpkg.progress`: the ``on_bytes`` byte-progress callback and its no-op default;
* :mod:`modelpkg.errors`: the base error types, with their exit codes.

Compatibility with the upstream Go axon and MLOS Core: docs/compatibility.md.
"""
