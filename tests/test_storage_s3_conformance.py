"""S3Transport passes the shared transport conformance suite against moto on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from axon.transports.base import Transport
from axon.transports.s3 import S3Transport
from modelpkg.s3 import S3Settings
from tests.conformance.s3 import S3Conformance
from tests.fixtures.s3 import S3Server

MiB = 1024 * 1024


class TestS3Conformance(S3Conformance):
    big_size = 12 * MiB  # three 5 MiB parts

    @pytest.fixture
    def transport(self, s3: S3Server) -> Iterator[Transport]:
        bucket = s3.bucket()
        settings = S3Settings(multipart_threshold=5 * MiB, part_size=5 * MiB, max_concurrency=2)
        with S3Transport(
            f"s3://{bucket}/models", endpoint_url=s3.endpoint_url, settings=settings
        ) as transport:
            yield transport
