"""S3Transport passes the shared transport conformance suite against moto on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from axon.transports.base import Transport
from axon.transports.s3 import S3Transport
from modelpkg.manifest import MANIFEST_NAME
from modelpkg.refs import ModelRef
from modelpkg.s3 import S3Settings
from tests.fixtures.s3 import S3Server
from tests.test_transport_conformance import TransportConformance

MiB = 1024 * 1024


class TestS3Conformance(TransportConformance):
    supports_resume = False  # a cut multipart upload is aborted; the file is sent again
    big_size = 12 * MiB  # three 5 MiB parts

    @pytest.fixture
    def transport(self, s3: S3Server) -> Iterator[Transport]:
        bucket = s3.bucket()
        settings = S3Settings(multipart_threshold=5 * MiB, part_size=5 * MiB, max_concurrency=2)
        with S3Transport(
            f"s3://{bucket}/models", endpoint_url=s3.endpoint_url, settings=settings
        ) as transport:
            yield transport

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
        from modelpkg.manifest import Manifest

        snap = {MANIFEST_NAME: text}
        for entry in Manifest.from_text(text).files:
            body = store.call("get_object", key=store.blob_key(entry.sha256))["Body"].read()
            snap[entry.path] = body
        return snap
