"""Bad input to a real mlos-core is a 4xx that stores nothing and names no server path: path
segments no filesystem holds, text that is not Unicode, numbers past int64 or past Python's
digit limit, in manifests (JSON and YAML), multipart file names and headers. The keep-alive
connection a refusal was answered on serves the next request."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.mlos import Server, ServerFactory, manifest_for, upload_resumable
from tests.fixtures.raw_http import json_request, on_one_connection, request_bytes

DATA = b"hello"
SHA = hashlib.sha256(DATA).hexdigest()


def manifest(files: list[dict[str, Any]], model_id: str = "ns/m@v1") -> dict[str, Any]:
    m = manifest_for(model_id, {})
    m["spec"]["format"]["files"] = files
    return m


def entry(path: str = "w.bin", size: Any = 5, sha: str = SHA) -> dict[str, Any]:
    return {"path": path, "size": size, "sha256": sha}


def stored_uploads(srv: Server) -> list[str]:
    uploads = srv.models_dir / ".mlos" / "uploads"
    return sorted(p.name for p in uploads.iterdir()) if uploads.is_dir() else []


def model_files(srv: Server) -> list[str]:
    """Every file in the models dir outside the server's own state dir."""
    return sorted(
        str(p.relative_to(srv.models_dir))
        for p in srv.models_dir.rglob("*")
        if p.is_file() and not p.relative_to(srv.models_dir).parts[0].startswith(".")
    )


def raw_multipart(filename: bytes, files_in_manifest: list[dict[str, Any]]) -> tuple[bytes, str]:
    b = b"input-boundary-7"
    man = json.dumps(manifest(files_in_manifest)).encode()
    body = b"".join(
        [
            b'--%s\r\nContent-Disposition: form-data; name="model_id"\r\n\r\nns/m@v1\r\n' % b,
            b'--%s\r\nContent-Disposition: form-data; name="manifest"\r\n\r\n%s\r\n' % (b, man),
            b'--%s\r\nContent-Disposition: form-data; name="model_files"; filename="%s"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n%s\r\n" % (b, filename, DATA),
            b"--%s--\r\n" % b,
        ]
    )
    return body, f"multipart/form-data; boundary={b.decode()}"


@pytest.fixture
def srv(mlos_server: ServerFactory) -> Server:
    return mlos_server(no_fsync=True)


def assert_refused(answer: tuple[int, dict[str, str], bytes], status: int, code: str) -> None:
    got, _, body = answer
    data = json.loads(body)
    assert (got, data["code"]) == (status, code), (got, data)
    assert data["status"] == "error" and data["message"]


# ---- the cases -----------------------------------------------------------------------------
LONG = "a" * 256  # one byte over NAME_MAX
WIDE = "\U0001f600" * 64  # 64 characters, 256 bytes of UTF-8


def test_path_segments_no_filesystem_holds_are_400_and_store_nothing(srv: Server) -> None:
    reqs = [
        json_request("POST", "/v1/uploads", {"model_id": "ns/m@v1", "manifest": manifest(m)})
        for m in (
            [entry(f"{LONG}/w.bin")],
            [entry(WIDE)],
            [entry("d/" * 300 + "w.bin")],  # 900 bytes of segments, 1 KiB with the name: fine
            [entry("d/" * 600 + "w.bin")],  # over 1024 bytes
        )
    ]
    answers = on_one_connection(srv.url, [*reqs, request_bytes("GET", "/stats")])
    for i in (0, 1, 3):
        assert_refused(answers[i], 400, "invalid_manifest")
    assert answers[2][0] == 201  # a deep path within the limits is fine
    assert json.loads(answers[4][2])["open_uploads"] == 1 and len(stored_uploads(srv)) == 1
    # the longest segment allowed goes all the way through: upload, commit, on disk
    ok = {"model_id": "ns/m@v2", "manifest": manifest([entry("a" * 255)], "ns/m@v2")}
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        uid = c.post("/v1/uploads", json=ok).json()["upload_id"]
        assert c.put(f"/v1/uploads/{uid}/blobs/{SHA}", content=DATA).status_code == 201
        assert c.post(f"/v1/uploads/{uid}/commit").status_code == 200
    assert (srv.models_dir / "ns" / "m" / "v2" / ("a" * 255)).read_bytes() == DATA


def test_multipart_names_no_filesystem_holds_are_400_and_store_nothing(srv: Server) -> None:
    cases = [
        (f"{LONG}/w.bin".encode(), [], "invalid_path"),  # the file part's name
        (b"w.bin", [entry(f"{LONG}/w.bin")], "invalid_manifest"),  # the manifest lists it
        (WIDE.encode(), [], "invalid_path"),
        (b"\xed\xa0\x80.bin", [], "invalid_path"),  # a surrogate in (CESU) UTF-8 bytes
        (b"\xff\xfe.bin", [], "invalid_path"),  # not UTF-8 at all: not stored as U+FFFD
    ]
    reqs = []
    for filename, listed, _code in cases:
        body, ctype = raw_multipart(filename, listed)
        reqs.append(request_bytes("POST", "/models/upload", body, Content_Type=ctype))
    answers = on_one_connection(srv.url, [*reqs, request_bytes("GET", "/models")])
    for (_name, _listed, code), answer in zip(cases, answers, strict=False):
        assert_refused(answer, 400, code)
    assert json.loads(answers[-1][2])["total"] == 0
    assert model_files(srv) == []
    assert list((srv.models_dir / ".mlos" / "staging").iterdir()) == []


def test_text_that_is_not_unicode_is_400_and_no_upload_is_stored(srv: Server) -> None:
    lone = json.dumps({"model_id": "ns/m@v1", "manifest": manifest([entry("@LONE@")])})
    lone = lone.replace("@LONE@", "\\ud800")  # json.dumps would not write a lone half
    pair = lone.replace("\\ud800", "\\ud83d\\ude00")  # a valid pair: one character, fine
    yaml_lone = (  # the pure-Python YAML loader (taken when the text holds a '*') decodes it
        'apiVersion: axon.mlos.io/v1\nkind: Model\nmetadata: {description: "a*b"}\n'
        f'spec:\n  format:\n    files:\n    - {{path: "\\ud800", size: 5, sha256: {SHA}}}\n'
    )
    register_lone = {"model_id": "ns/m@v1", "framework": "\ud800"}
    reqs = [
        json_request("POST", "/v1/uploads", lone.encode()),
        json_request("POST", "/v1/uploads", {"model_id": "ns/m@v1", "manifest": yaml_lone}),
        json_request("POST", "/models/register", json.dumps(register_lone).encode()),
        json_request("POST", "/v1/uploads", pair.encode()),
        request_bytes("GET", "/stats"),
    ]
    answers = on_one_connection(srv.url, reqs)
    assert_refused(answers[0], 400, "invalid_json")
    assert_refused(answers[1], 400, "invalid_manifest")
    assert_refused(answers[2], 400, "invalid_json")
    assert answers[3][0] == 201, answers[3]
    assert json.loads(answers[4][2])["open_uploads"] == 1 and len(stored_uploads(srv)) == 1
    assert httpx.get(f"{srv.url}/models").json()["total"] == 0


def test_a_manifest_value_that_is_not_unicode_is_400(srv: Server) -> None:
    """A description decoded to a lone surrogate (YAML's pure-Python loader, or JSON text)
    is refused like a path would be: storing it (the server writes manifest.yaml) or naming
    it in an answer would fail later."""
    texts = [
        'apiVersion: axon.mlos.io/v1\nkind: Model\nmetadata: {description: "x*\\ud800"}\n'
        f"spec:\n  format:\n    files:\n    - {{path: w.bin, size: 5, sha256: {SHA}}}\n",
        json.dumps(manifest([entry()])).replace(
            '"spec"', '"metadata": {"description": "\\udc00"}, "spec"'
        ),
    ]
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        for text in texts:
            r = c.post(
                "/models/upload",
                data={"model_id": "ns/d@v1", "manifest": text},
                files=[("model_files", ("w.bin", DATA))],
            )
            assert (r.status_code, r.json()["code"]) == (400, "invalid_manifest"), r.text
            r = c.post("/v1/uploads", json={"model_id": "ns/d@v1", "manifest": text})
            assert (r.status_code, r.json()["code"]) == (400, "invalid_manifest"), r.text
        assert c.get("/models").json()["total"] == 0 and c.get("/stats").status_code == 200
    assert stored_uploads(srv) == [] and model_files(srv) == []


@pytest.mark.parametrize(
    "size",
    [2**63, 10**19, 10**100, 10**4000],
    ids=["2^63", "10^19", "10^100", "10^4000"],
)
def test_sizes_past_int64_are_400_not_507(srv: Server, size: int) -> None:
    text = json.dumps({"model_id": "ns/m@v1", "manifest": manifest([entry(size=size)])})
    form_manifest = json.dumps(manifest([entry(size=size)]))
    body, ctype = multipart_with_manifest(form_manifest.encode())
    answers = on_one_connection(
        srv.url,
        [
            json_request("POST", "/v1/uploads", text.encode()),
            request_bytes("POST", "/models/upload", body, Content_Type=ctype),
            request_bytes("GET", "/stats"),
        ],
    )
    assert_refused(answers[0], 400, "invalid_manifest")
    assert_refused(answers[1], 400, "invalid_manifest")
    assert json.loads(answers[2][2])["open_uploads"] == 0 and stored_uploads(srv) == []


def test_files_adding_up_past_int64_are_400_and_the_largest_size_is_not(srv: Server) -> None:
    two = [entry("a", size=2**62), entry("b", size=2**62, sha="b" * 64)]
    answers = on_one_connection(
        srv.url,
        [
            json_request("POST", "/v1/uploads", {"model_id": "ns/m@v1", "manifest": manifest(two)}),
            json_request(
                "POST",
                "/v1/uploads",
                {"model_id": "ns/m@v1", "manifest": manifest([entry(size=2**63 - 1)])},
            ),
        ],
    )
    assert_refused(answers[0], 400, "invalid_manifest")
    # 2^63 - 1 bytes is a size; it does not fit this disk: that is the 507 it is
    assert_refused(answers[1], 507, "insufficient_storage")
    assert stored_uploads(srv) == []


def multipart_with_manifest(man: bytes) -> tuple[bytes, str]:
    b = b"input-boundary-9"
    body = b"".join(
        [
            b'--%s\r\nContent-Disposition: form-data; name="model_id"\r\n\r\nns/m@v1\r\n' % b,
            b'--%s\r\nContent-Disposition: form-data; name="manifest"\r\n\r\n%s\r\n' % (b, man),
            b"--%s--\r\n" % b,
        ]
    )
    return body, f"multipart/form-data; boundary={b.decode()}"


def test_numbers_past_the_digit_limit_are_400(srv: Server) -> None:
    huge_yaml = (
        "apiVersion: axon.mlos.io/v1\nkind: Model\nspec:\n  format:\n    files:\n"
        f"    - path: w.bin\n      size: {'9' * 100_000}\n      sha256: {SHA}\n"
    )
    huge_json = json.dumps({"model_id": "ns/m@v1", "manifest": manifest([entry(size=0)])})
    huge_json = huge_json.replace('"size": 0', '"size": ' + "9" * 5000)
    body, ctype = multipart_with_manifest(huge_yaml.encode())
    reqs = [
        json_request("POST", "/v1/uploads", {"model_id": "ns/m@v1", "manifest": huge_yaml}),
        json_request("POST", "/v1/uploads", huge_json.encode()),
        request_bytes("POST", "/models/upload", body, Content_Type=ctype),
    ]
    answers = on_one_connection(srv.url, reqs)
    assert_refused(answers[0], 400, "invalid_manifest")
    assert_refused(answers[1], 400, "invalid_json")
    assert_refused(answers[2], 400, "invalid_manifest")
    assert stored_uploads(srv) == []


def test_byte_count_headers_are_bounded_and_ascii(srv: Server) -> None:
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        opened = c.post(
            "/v1/uploads", json={"model_id": "ns/m@v1", "manifest": manifest([entry()])}
        )
        uid = opened.json()["upload_id"]
    blob = f"/v1/uploads/{uid}/blobs/{SHA}"
    bad_offsets = ["9" * 5000, "9" * 20, str(2**63), "\xb2", "+1", "-0", "0x1", "1e3"]
    reqs = [request_bytes("PUT", blob, DATA, Upload_Offset=off) for off in bad_offsets]
    reqs.append(request_bytes("HEAD", blob))
    answers = on_one_connection(srv.url, reqs)
    for off, answer in zip(bad_offsets, answers, strict=False):
        assert answer[0] == 400, (off, answer)
        assert json.loads(answer[2])["code"] == "bad_request", (off, answer)
    assert answers[-1][0] == 200 and answers[-1][1]["upload-offset"] == "0"
    # the upload is intact: it completes
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.put(blob, content=DATA, headers={"Upload-Offset": "0"}).status_code == 201
        assert c.post(f"/v1/uploads/{uid}/commit").status_code == 200


def test_no_answer_names_a_server_path(srv: Server, tmp_path: Path) -> None:
    """What reached clients before: OSError texts (File name too long: '/srv/...'), the
    models dir in a register refusal. Every refusal here, over every route, names none."""
    base = str(srv.models_dir.parent)
    bodies = []
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        for path in ("/nowhere", str(srv.models_dir / "ns" / "x" / "v1"), None):
            body = {"model_id": "ns/x@v1"} | ({"path": path} if path else {})
            bodies.append(c.post("/models/register", json=body))
        bodies.append(
            c.post("/v1/uploads", json={"model_id": "ns/m@v1", "manifest": manifest([entry(LONG)])})
        )
        bodies.append(c.get("/v1/models/ns/x@v1/manifest"))
        bodies.append(c.post("/v1/models/ns/x@v1/rollback"))
        bodies.append(c.delete("/models/ns/x@v1"))
    for r in bodies:
        assert 400 <= r.status_code < 500, r.text
        assert base not in r.text and str(tmp_path) not in r.text, r.text
    # the server's own error about a file of the models dir (a previous generation whose
    # manifest was damaged on disk) names it relative to the models dir
    upload_resumable(srv.url, "ns/r@v1", {"w.bin": b"one"})
    upload_resumable(srv.url, "ns/r@v1", {"w.bin": b"two"})
    (srv.models_dir / ".mlos" / "previous" / "ns" / "r" / "v1" / "manifest.yaml").write_text("{")
    r = httpx.post(f"{srv.url}/v1/models/ns/r@v1/rollback")
    assert (r.status_code, r.json()["code"]) == (500, "corrupt_model"), r.text
    assert "<models-dir>/ns/r/v1" in r.text and base not in r.text, r.text
