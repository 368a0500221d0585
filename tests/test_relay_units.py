"""The relay's small contracts: desired-state records and peer URLs (no servers needed)."""

from __future__ import annotations

import pytest

from mlos_core.errors import BadRequest
from mlos_core.http.routes_relay import _byte_range
from mlos_core.relay.peers import normalize
from modelpkg.desired import (
    DesiredModel,
    DesiredStateError,
    desired_key,
    desired_prefix,
    parse_record,
)

DIGEST = "ab" * 32


def test_desired_keys_sit_next_to_the_member_records():
    assert desired_prefix("prod") == "/mlos/clusters/prod/desired/"
    assert desired_key("prod", "hf/bert@v1") == "/mlos/clusters/prod/desired/hf%2Fbert%40v1"
    assert desired_key("prod", "hf/bert@v1", "/custom/") == (
        "/custom/clusters/prod/desired/hf%2Fbert%40v1"
    )
    with pytest.raises(DesiredStateError, match="cluster name"):
        desired_prefix("a/b")


def test_a_desired_record_round_trips_and_is_checked():
    record = DesiredModel.now("hf/bert@v1", DIGEST)
    key = desired_key("prod", "hf/bert@v1")
    assert parse_record(key, record.to_json(), desired_prefix("prod")) == record
    bad = {
        "not json": "{",
        "a list": "[]",
        "short digest": '{"model_id": "hf/b@v1", "manifest_sha256": "ab", '
        '"published_at": "2026-11-30T16:40:00Z"}',
        "bad time": f'{{"model_id": "hf/b@v1", "manifest_sha256": "{DIGEST}", '
        '"published_at": "yesterday"}',
        "bad id": f'{{"model_id": "../x", "manifest_sha256": "{DIGEST}", '
        '"published_at": "2026-11-30T16:40:00Z"}',
    }
    for what, value in bad.items():
        with pytest.raises(DesiredStateError, match="desired-state key"):
            parse_record(key, value)
        assert what
    other = DesiredModel.now("hf/other@v1", DIGEST).to_json()
    with pytest.raises(DesiredStateError, match="not the key's"):
        parse_record(key, other, desired_prefix("prod"))
    with pytest.raises(DesiredStateError, match="bytes"):
        parse_record(key, "x" * 5000)


def test_peer_urls_compare_as_scheme_host_port_path():
    assert normalize("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert normalize("HTTP://Core-1.Example:80") == "http://core-1.example:80"
    assert normalize("http://core-1") == "http://core-1:80"
    assert normalize("https://core-1/mlos/") == "https://core-1:443/mlos"
    assert normalize("http://[::1]:9000") == "http://[::1]:9000"
    for bad in (
        "ftp://h",
        "http://u:p@h",
        "http://h/?a=1",
        "http://h/#f",
        "h:80",
        "",
        "http://h:x",
    ):
        with pytest.raises(BadRequest) as err:
            normalize(bad)
        assert err.value.code == "invalid_source"


def test_byte_ranges():
    assert _byte_range(None, 10) is None
    assert _byte_range("bytes=2-", 10) == (2, 9)
    assert _byte_range("bytes=2-4", 10) == (2, 4)
    assert _byte_range("bytes=2-400", 10) == (2, 9)
    assert _byte_range("bytes=-3", 10) == (7, 9)
    assert _byte_range("bytes=-30", 10) == (0, 9)
    assert _byte_range("bytes=10-", 10) == "unsatisfiable"
    assert _byte_range("bytes=5-4", 10) == "unsatisfiable"
    assert _byte_range("bytes=0-", 0) == "unsatisfiable"
    assert _byte_range("bytes=1-2,4-5", 10) is None  # several ranges: the whole blob
    assert _byte_range("items=1-2", 10) is None
