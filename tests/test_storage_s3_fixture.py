"""The S3 test server itself: buckets, objects, and credential checking."""

from __future__ import annotations

import pytest

from tests.fixtures.s3 import S3Server


def test_bucket_roundtrip(s3: S3Server) -> None:
    bucket = s3.bucket()
    client = s3.client()
    client.put_object(Bucket=bucket, Key="a/b.txt", Body=b"hello")
    assert client.get_object(Bucket=bucket, Key="a/b.txt")["Body"].read() == b"hello"
    assert s3.endpoint_url.startswith("http://127.0.0.1:")


def test_auth_server_refuses_wrong_key(s3_auth_server: S3Server) -> None:
    from botocore.exceptions import ClientError

    bucket = s3_auth_server.bucket()
    with pytest.raises(ClientError) as info:
        s3_auth_server.client(access_key="AKIAWRONGWRONGWRONG1", secret_key="nope").head_bucket(
            Bucket=bucket
        )
    assert info.value.response["Error"]["Code"] in ("403", "InvalidAccessKeyId", "AccessDenied")
