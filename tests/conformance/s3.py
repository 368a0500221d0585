"""The transport conformance suite for S3 layouts: the snapshot is what a reader of the bucket
sees (the committed manifest, then each file from its content-addressed blob)."""

from __future__ import annotations

from axon.transports.base import Transport
from axon.transports.s3 import S3Transport
from modelpkg.manifest import MANIFEST_NAME, Manifest
from modelpkg.refs import ModelRef
from tests.conformance.transport import TransportConformance


class S3Conformance(TransportConformance):
    """Subclasses provide the ``transport`` fixture (an :class:`S3Transport`) and set
    ``big_size`` above their multipart threshold, so the cut file is a multipart upload."""

    supports_resume = False  # a cut multipart upload is aborted; the file is sent again

    def snapshot(self, transport: Transport, ref: ModelRef) -> dict[str, bytes] | None:
        """What a reader sees: the committed manifest, then each file from its blob."""
        assert isinstance(transport, S3Transport)
        store = transport.store
        try:
            text = store.call("get_object", key=store.manifest_key(ref))["Body"].read()
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                return None
            raise
        snap = {MANIFEST_NAME: text}
        for entry in Manifest.from_text(text).files:
            body = store.call("get_object", key=store.blob_key(entry.sha256))["Body"].read()
            snap[entry.path] = body
        return snap
