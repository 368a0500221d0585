"""The relay calls of :class:`axon.mlos_client.MlosClient`: what a real mlos-core answers,
and answers no mlos-core gives (each refused, naming what is wrong)."""

from __future__ import annotations

from typing import Any

import pytest

from axon.mlos_client import Invalid, MlosClient, PullStatus, RelayInfo
from modelpkg.refs import ModelRef

REF = ModelRef.parse("hf/bert@v1")
DIGEST = "a" * 64


def status(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "status": "success",
        "pull_id": "p-1",
        "model_id": REF.id,
        "manifest_sha256": DIGEST,
        "state": "running",
        "source": "http://10.0.0.6:8080",
        "tried": [{"source": "http://10.0.0.7:8080", "code": "source_unreachable"}],
        "bytes_total": 100,
        "bytes_done": 40,
        "bytes_fetched": 40,
        "upload_id": "u-0123",
    }
    doc.update(over)
    return doc


def test_a_pull_status_is_read_field_by_field() -> None:
    parsed = PullStatus.parse(status(), ref=REF, digest=DIGEST, pull_id="p-1")
    assert (parsed.state, parsed.bytes_done, parsed.source) == (
        "running",
        40,
        "http://10.0.0.6:8080",
    )
    assert parsed.tried[0].code == "source_unreachable" and not parsed.final
    unchanged = PullStatus.parse(
        {"status": "success", "pull_id": None, "state": "committed", "unchanged": True,
         "model_id": REF.id, "manifest_sha256": DIGEST},
        ref=REF,
        digest=DIGEST,
    )  # fmt: skip
    assert unchanged.unchanged and unchanged.final


@pytest.mark.parametrize(
    ("over", "why"),
    [
        ({"model_id": "hf/other@v1"}, "'model_id'"),
        ({"manifest_sha256": "b" * 64}, "'manifest_sha256'"),
        ({"state": "done"}, "'state'"),
        ({"bytes_done": 200}, "'bytes_done' is more than 'bytes_total'"),
        ({"bytes_total": -1}, "'bytes_total'"),
        ({"pull_id": "p-2"}, "'pull_id'"),
        ({"pull_id": "../x"}, "'pull_id'"),
        ({"tried": [{"code": "x"}]}, "'source' is missing"),
        ({"pull_id": None, "unchanged": False}, "'pull_id' is null"),
        ({"upload_id": "u 1"}, "'upload_id'"),
    ],
)
def test_a_pull_status_no_mlos_core_gives_is_refused(over: dict[str, Any], why: str) -> None:
    with pytest.raises(Invalid, match=why.replace("(", r"\(")):
        PullStatus.parse(status(**over), ref=REF, digest=DIGEST, pull_id="p-1")


def test_relay_info_needs_an_http_address() -> None:
    info = RelayInfo.parse(
        {"status": "success", "advertise": "http://10.0.0.5:8080/", "pull": True, "blobs": True,
         "peers": ["http://10.0.0.6:8080/"]}
    )  # fmt: skip
    assert info.advertise == "http://10.0.0.5:8080" and info.peers == ("http://10.0.0.6:8080",)
    assert info.can_pull and info.why_not == ""
    lone = RelayInfo.parse({"status": "success", "advertise": "http://h:1", "pull": True})
    assert not lone.can_pull and "no peers" in lone.why_not
    with pytest.raises(Invalid, match="not an http"):
        RelayInfo.parse({"status": "success", "advertise": "file:///etc/passwd"})


def test_a_real_mlos_core_tells_its_advertised_address(mlos_server: Any) -> None:
    srv = mlos_server(advertise="http://10.9.8.7:8080", peer=["http://127.0.0.1:9"])
    with MlosClient(srv.url) as client:
        info = client.relay_info()
    assert info is not None
    assert info.advertise == "http://10.9.8.7:8080"  # not the address this client used
    assert info.can_pull and info.peers == ("http://127.0.0.1:9",)
