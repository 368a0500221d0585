"""axon against servers that are not mlos-core: a corpus of hostile answers, each served by a
real HTTP server on 127.0.0.1 (tests/fixtures/hostile_server.py) to the real ``axon`` CLI.

Every case must end in a clear failure: the documented exit code, one ``axon: error`` line
naming the instance (its URL) and what was wrong, no traceback, within a few seconds of
``--timeout 2 --retries 0`` and with a small peak RSS (measured with ``wait4``) however many
bytes the server tries to send. The cases lie in one place each; :class:`FakeCore` answers
faithfully everywhere else, and the faithful run itself must succeed (``test_a_faithful_...``),
so a case fails for its lie and nothing else.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from axon.cache import Cache
from axon.install import install_source
from tests.fixtures.hostile_server import (
    Cut,
    Drip,
    Endless,
    FakeCore,
    Hang,
    HostileServer,
    Reply,
    Seen,
    head_only,
    json_reply,
    reply,
)
from tests.fixtures.models import write_model_dir
from tests.helpers import write_config
from tests.stress.figures import record

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MiB = 1024 * 1024
REF, BIG = "t/m@v1", "t/big@v1"
FAST = ("--timeout", "2", "--retries", "0")
WITHIN = 12.0  # seconds: --timeout 2 plus start-up on a busy machine (a hang was 60 s+)
RSS_LIMIT = 100 * MiB  # peak RSS of the axon process (about 32 MiB at rest)
ENDLESS = 512 * MiB  # what an endless answer would send if axon kept reading


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float
    peak_rss: int  # bytes

    def error_line(self) -> str:
        lines = [ln for ln in self.err.splitlines() if ln.startswith("axon: error")]
        assert len(lines) == 1, self.err
        return lines[0]


# Linux keeps a process's peak RSS across exec, so a child forked from this (large) pytest
# process would report pytest's size. A small launcher forks axon instead and reports the
# peak of that grandchild as wait4 gives it.
LAUNCHER = """
import os, signal, sys, time
out, limit, args = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
pid = os.posix_spawn(args[0], args, os.environ)
deadline, killed = time.monotonic() + limit, False
while True:
    done, status, usage = os.wait4(pid, os.WNOHANG)
    if done:
        break
    if time.monotonic() > deadline and not killed:
        os.kill(pid, signal.SIGKILL)
        killed = True
    time.sleep(0.01)
with open(out, "w") as fh:
    fh.write(f"{usage.ru_maxrss} {int(killed)}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(home: Path, *args: str, limit: float = 60.0) -> Run:
    """``axon ARGS`` as a subprocess; its exit code, output, wall time and peak RSS."""
    env = dict(os.environ, AXON_HOME=str(home))
    env.pop("MLOS_CORE_ENDPOINT", None)
    env.pop("AXON_DEBUG", None)
    report = home / "rusage.txt"
    cmd = [sys.executable, "-c", LAUNCHER, str(report), str(limit), sys.executable, "-m", "axon"]
    started = time.monotonic()
    done = subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=env, timeout=limit + 30
    )
    seconds = time.monotonic() - started
    maxrss, killed = report.read_text().split()
    if killed == "1":
        pytest.fail(f"axon {' '.join(args)} still running after {limit:g} s")
    return Run(done.returncode, done.stdout, done.stderr, seconds, int(maxrss) * 1024)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An AXON_HOME holding REF (six small files) and BIG (8 MiB of weights)."""
    root = tmp_path_factory.mktemp("hostile-home")
    for ref, size in ((REF, 4096), (BIG, 8 * MiB)):
        src = write_model_dir(root / f"src-{ref.replace('/', '-')}", weights_size=size)
        install_source(str(src), as_ref=ref, cache=Cache(root / "cache"))
    return root


# ---- the lies -------------------------------------------------------------------------------
Script = Callable[[Seen], Reply | bytes]


def everywhere(answer: Reply | bytes) -> Callable[[], Script]:
    """Every request answered the same way."""
    return lambda: lambda _req: answer


def lie(
    endpoint: str, make: Callable[[FakeCore], Callable[[Seen], Reply | bytes]]
) -> Callable[[], Script]:
    """A faithful core but for ``endpoint``, answered by ``make(core)``."""

    def build() -> Script:
        core = FakeCore()
        core.overrides[endpoint] = make(core)
        return core

    return build


def open_edited(edit: Callable[[dict[str, Any]], Any]) -> Callable[[], Script]:
    """The faithful open answer, edited by ``edit`` (in place)."""

    def make(core: FakeCore) -> Callable[[Seen], bytes]:
        def answer(req: Seen) -> bytes:
            data = core.open_answer(req)
            edit(data)
            return json_reply(201, data)

        return answer

    return lie("open", make)


def commit_edited(edit: Callable[[dict[str, Any]], Any]) -> Callable[[], Script]:
    """The faithful commit answer, edited by ``edit`` (in place)."""

    def make(core: FakeCore) -> Callable[[Seen], bytes]:
        def answer(_req: Seen) -> bytes:
            data = copy.deepcopy(core.commit_answer(core.last_model_id()))
            edit(data)
            return json_reply(200, data)

        return answer

    return lie("commit", make)


def put_says(status: int, edit: Callable[[dict[str, Any], Seen], Any]) -> Callable[[], Script]:
    """Every blob PUT answered ``status`` with the faithful answer edited by ``edit``."""

    def make(_core: FakeCore) -> Callable[[Seen], bytes]:
        def answer(req: Seen) -> bytes:
            sha = req.path.rsplit("/", 1)[1]
            data = {"status": "success", "sha256": sha, "offset": req.body_size, "complete": True}
            edit(data, req)
            return json_reply(status, data)

        return answer

    return lie("put", make)


def first_needed(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["needed"][0][key] = value

    return edit


def setting(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data[key] = value

    return edit


def dropping(key: str) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data.pop(key, None)

    return edit


def cut_then(head: bytes) -> Callable[[], Script]:
    """The first blob PUT is cut mid-body; the resume's HEAD is answered ``head``."""

    def build() -> Script:
        core = FakeCore()
        core.overrides["put"] = lambda _req: [Cut()]
        core.overrides["head"] = lambda _req: head
        return core

    return build


def _wrong_size(data: dict[str, Any]) -> None:
    data["needed"][0]["size"] += 1


def _unknown_blob(data: dict[str, Any]) -> None:
    data["needed"][0]["sha256"] = hashlib.sha256(b"not in the manifest").hexdigest()


def _nothing_listed(data: dict[str, Any]) -> None:
    data["needed"], data["have"] = [], []


def _same_blob_twice(data: dict[str, Any]) -> None:
    data["needed"].append(dict(data["needed"][0]))


def _unchanged_but_needed(data: dict[str, Any]) -> None:
    data["unchanged"] = True


HTML = reply(200, b"<!DOCTYPE html><html><body>It works!</body></html>", content_type="text/html")
OTHER_DIGEST = hashlib.sha256(b"another manifest").hexdigest()


@dataclass(frozen=True)
class Case:
    name: str
    server: Callable[[], Script]
    says: str  # in the error line
    command: str = "publish"
    ref: str = REF
    code: int = 7
    extra: tuple[str, ...] = FAST


CASES = [
    # -- the attacker's servers: anything answering 200
    Case("html_everywhere", everywhere(HTML), "not JSON (text/html, starts '<!DOCTYPE html>"),
    Case(
        "status_success_only",
        everywhere(json_reply(200, {"status": "success"})),
        "'model_id' is missing",
    ),
    Case("a_list", everywhere(json_reply(200, [1, 2, 3])), "is a list, not a JSON object"),
    Case("empty_body", everywhere(reply(200, b"")), "not JSON"),
    Case(
        "gzip_encoded",
        everywhere(reply(200, b"\x1f\x8b\x08\x00", headers={"Content-Encoding": "gzip"})),
        "encoded (gzip)",
    ),
    # -- open: wrong shapes, types and ids
    Case(
        "open_status_error_200",
        open_edited(setting("status", "error")),
        "'status' is 'error', not 'success'",
    ),
    Case(
        "open_other_model",
        open_edited(setting("model_id", "other/m@v1")),
        "'model_id' is 'other/m@v1', not 't/m@v1'",
    ),
    Case(
        "upload_id_empty",
        open_edited(setting("upload_id", "")),
        "'upload_id' '' is not a valid upload_id",
    ),
    Case(
        "upload_id_traversal",
        open_edited(setting("upload_id", "../x")),
        "'upload_id' '../x' is not a valid upload_id",
    ),
    Case(
        "upload_id_slash",
        open_edited(setting("upload_id", "a/../../b")),
        "is not a valid upload_id",
    ),
    Case(
        "upload_id_very_long",
        open_edited(setting("upload_id", "u" * 100_000)),
        "is not a valid upload_id",
    ),
    Case(
        "upload_id_number",
        open_edited(setting("upload_id", 12345)),
        "'upload_id' is a number, not text",
    ),
    Case("upload_id_missing", open_edited(dropping("upload_id")), "'upload_id' is missing"),
    Case(
        "unchanged_text",
        open_edited(setting("unchanged", "no")),
        "'unchanged' is text, not true or false",
    ),
    Case(
        "needed_not_a_list",
        open_edited(setting("needed", "everything")),
        "'needed' is text, not a list",
    ),
    Case("needed_unknown_blob", open_edited(_unknown_blob), "which the manifest lacks"),
    Case("needed_twice", open_edited(_same_blob_twice), "a second time"),
    Case("needed_wrong_size", open_edited(_wrong_size), "'size' is"),
    Case("nothing_listed", open_edited(_nothing_listed), "do not list each of the manifest's"),
    Case(
        "unchanged_but_needed",
        open_edited(_unchanged_but_needed),
        "'unchanged' is true but 'needed' is not empty",
    ),
    Case(
        "open_other_digest",
        open_edited(setting("manifest_sha256", OTHER_DIGEST)),
        f"open upload of t/m@v1: {{url}} answered 201, not as MLOS Core does: "
        f"'manifest_sha256' is '{OTHER_DIGEST}', not '",
    ),
    Case(
        "open_no_digest", open_edited(dropping("manifest_sha256")), "'manifest_sha256' is missing"
    ),
    # -- open: lying offsets
    Case("offset_negative", open_edited(first_needed("offset", -5)), "'offset' is -5, outside 0.."),
    Case(
        "offset_beyond_size",
        open_edited(first_needed("offset", 10**12)),
        "'offset' is 1000000000000, outside 0..",
    ),
    Case(
        "offset_fraction",
        open_edited(first_needed("offset", 1.5)),
        "'offset' is a number, not a byte count",
    ),
    Case(
        "offset_boolean",
        open_edited(first_needed("offset", True)),
        "'offset' is a boolean, not a byte count",
    ),
    # -- a blob's PUT
    Case(
        "put_html",
        lie("put", lambda _c: lambda _r: reply(201, b"<html></html>", content_type="text/html")),
        "not JSON",
    ),
    Case(
        "put_409_negative_offset",
        put_says(409, lambda d, r: d.update(offset=-1)),
        "'offset' is -1, outside 0..",
    ),
    Case(
        "put_409_offset_beyond",
        put_says(409, lambda d, r: d.update(offset=r.body_size + 100)),
        "outside 0..",
    ),
    Case(
        "put_201_other_blob",
        put_says(201, lambda d, r: d.update(sha256="0" * 64)),
        "'sha256' is '0000",
    ),
    Case(
        "put_201_incomplete",
        put_says(201, lambda d, r: d.update(complete=False)),
        "does not add up",
    ),
    Case(
        "put_200_complete_offset",
        put_says(200, lambda d, r: d.update(complete=False)),
        "does not add up",
    ),
    # -- the resume's HEAD (a cut PUT, one retry)
    Case(
        "head_negative_offset",
        cut_then(head_only(200, {"Upload-Offset": "-3"})),
        "Upload-Offset '-3' is not a byte count",
        extra=("--timeout", "2", "--retries", "1"),
    ),
    Case(
        "head_offset_beyond",
        cut_then(head_only(200, {"Upload-Offset": "999999999"})),
        "Upload-Offset '999999999'",
        extra=("--timeout", "2", "--retries", "1"),
    ),
    Case(
        "head_no_offset",
        cut_then(head_only(200, {})),
        "no Upload-Offset header",
        extra=("--timeout", "2", "--retries", "1"),
    ),
    # -- commit
    Case(
        "commit_status_error_200",
        commit_edited(setting("status", "error")),
        "'status' is 'error', not 'success'",
    ),
    Case(
        "commit_other_digest",
        commit_edited(setting("manifest_sha256", OTHER_DIGEST)),
        f"'manifest_sha256' is '{OTHER_DIGEST}', not '",
    ),
    Case(
        "commit_no_digest",
        commit_edited(dropping("manifest_sha256")),
        "'manifest_sha256' is missing",
    ),
    Case(
        "commit_other_model", commit_edited(setting("model_id", "t/m@v2")), "'model_id' is 't/m@v2'"
    ),
    Case("commit_html", lie("commit", lambda _c: lambda _r: HTML), "not JSON"),
    # -- time: drips and silence
    Case(
        "drip_open_head",
        lie(
            "open",
            lambda _c: lambda _r: [Drip(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")],
        ),
        "is too slow",
    ),
    Case(
        "drip_open_body",
        lie(
            "open",
            lambda _c: (
                lambda _r: [b"HTTP/1.1 201 X\r\nContent-Length: 1000\r\n\r\n", Drip(b"{" * 1000)]
            ),
        ),
        "is too slow",
    ),
    Case(
        "drip_put_answer",
        lie(
            "put",
            lambda _c: lambda _r: [Drip(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")],
        ),
        "is too slow",
    ),
    Case(
        "drip_commit_answer",
        lie(
            "commit", lambda _c: lambda _r: [b"HTTP/1.1 200 OK\r\n", Drip(b"X-Pad: " + b"a" * 1000)]
        ),
        "is too slow",
    ),
    Case("silent_commit", lie("commit", lambda _c: lambda _r: [Hang()]), "did not answer in time"),
    Case(
        "slow_reader",
        FakeCore,
        "upload of model.safetensors",
        ref=BIG,
    ),
    # -- size: answers that never end
    Case(
        "endless_open_body",
        lie(
            "open",
            lambda _c: lambda _r: [reply(201, b"", length=False), Endless(b"[" * 65536, ENDLESS)],
        ),
        "larger than",
    ),
    Case(
        "huge_declared_length",
        lie(
            "open",
            lambda _c: (
                lambda _r: [
                    b"HTTP/1.1 201 X\r\nContent-Length: 4294967296\r\n\r\n",
                    Endless(b" " * 65536, ENDLESS),
                ]
            ),
        ),
        "larger than",
    ),
    Case(
        "endless_continue_heads",
        lie(
            "open",
            lambda _c: lambda _r: [Endless(b"HTTP/1.1 100 Continue\r\n\r\n" * 2000, ENDLESS)],
        ),
        "in its answer, more than MLOS Core does",
    ),
    Case(
        "endless_put_answer",
        lie(
            "put",
            lambda _c: lambda _r: [reply(201, b"", length=False), Endless(b" " * 65536, ENDLESS)],
        ),
        "larger than",
    ),
    Case(
        "endless_error_body",
        lie(
            "open",
            lambda _c: (
                lambda _r: [
                    reply(500, b"", length=False, content_type="text/plain"),
                    Endless(b"x" * 65536, ENDLESS),
                ]
            ),
        ),
        "answered 500",
    ),
    # -- register
    Case("register_html", everywhere(HTML), "not JSON", command="register", extra=()),
    Case(
        "register_status_only",
        everywhere(json_reply(200, {"status": "success"})),
        "'model_id' is missing",
        command="register",
        extra=(),
    ),
    Case(
        "register_other_model",
        lie(
            "register",
            lambda _c: lambda _r: json_reply(200, {"status": "success", "model_id": "x/y@z"}),
        ),
        "'model_id' is 'x/y@z'",
        command="register",
        extra=(),
    ),
    Case(
        "register_drip",  # too slow is "not notified" (exit 8), like an instance that is down
        lie("register", lambda _c: lambda _r: [Drip(b"HTTP/1.1 200 OK\r\n\r\n")]),
        "is too slow",
        command="register",
        code=8,
        extra=(),
    ),
    Case(
        "register_endless",
        lie(
            "register",
            lambda _c: lambda _r: [reply(200, b"", length=False), Endless(b'"' * 65536, ENDLESS)],
        ),
        "larger than",
        command="register",
        extra=(),
    ),
    Case(
        "register_redirect",
        everywhere(reply(307, b"", headers={"Location": "http://127.0.0.1:1/models/register"})),
        "a redirect to http://127.0.0.1:1/models/register",
        command="register",
        extra=(),
    ),
    # a 200 saying "status": "error" is the server refusing: not notified (exit 8), its words shown
    Case(
        "register_refused_in_200",
        lie(
            "register",
            lambda _c: lambda _r: json_reply(200, {"status": "error", "message": "no \x1b[31mway"}),
        ),
        "no ?[31mway",
        command="register",
        code=8,
        extra=(),
    ),
    # -- status: the manifest download and the registration record
    Case("status_html", everywhere(HTML), "its manifest is invalid", command="status", extra=()),
    Case(
        "status_manifest_not_yaml",
        lie(
            "manifest",
            lambda _c: (
                lambda _r: reply(200, b"- just\n- a list\n", content_type="application/yaml")
            ),
        ),
        "its manifest is invalid",
        command="status",
        extra=(),
    ),
    Case(
        "status_manifest_endless",
        lie(
            "manifest",
            lambda _c: (
                lambda _r: [reply(200, b"", length=False), Endless(b"a: b\n" * 10000, ENDLESS)]
            ),
        ),
        "larger than 16.0 MiB",
        command="status",
        extra=(),
    ),
    Case(
        "status_record_not_object",
        lie("model", lambda _c: lambda _r: json_reply(200, ["t/m@v1"])),
        "is a list, not a JSON object",
        command="status",
        extra=(),
    ),
    Case(
        "status_drip",
        lie("manifest", lambda _c: lambda _r: [Drip(b"HTTP/1.1 200 OK\r\n\r\n")]),
        "is too slow",
        command="status",
        extra=(),
    ),
]
# the redirects need a second server: their cases are below


def _run_case(home: Path, case: Case, srv: HostileServer) -> Run:
    """``publish`` takes ``--timeout``; ``register`` and ``status`` get a configured target
    with ``timeout: 2`` (the same bound, from the config file)."""
    if case.command == "publish":
        return run_measured(home, case.command, case.ref, "--target", srv.url, *case.extra)
    write_config(home, {"h": {"endpoint": srv.url, "access_method": "api", "timeout": 2}})
    try:
        return run_measured(home, case.command, case.ref, "--target", "h", *case.extra)
    finally:
        (home / "config.yaml").unlink()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_hostile_answer_is_a_clear_failure(home: Path, case: Case) -> None:
    server_kw: dict[str, Any] = {"read_rate": 1024} if case.name == "slow_reader" else {}
    with HostileServer(case.server(), **server_kw) as srv:
        run = _run_case(home, case, srv)
        sent = srv.sent
    assert run.code == case.code, run.err
    line = run.error_line()
    assert srv.url in line, line
    assert case.says.format(url=srv.url) in line, line
    assert "Traceback" not in run.err
    assert run.seconds < WITHIN, f"{case.name} took {run.seconds:.1f} s"
    assert run.peak_rss < RSS_LIMIT, f"{case.name}: peak RSS {run.peak_rss / MiB:.0f} MiB"
    _record(case.name, run, sent)


def test_a_faithful_core_is_a_success(home: Path) -> None:
    """The corpus's servers are faithful but for their lie: unlied, they serve axon well."""
    core = FakeCore()
    with HostileServer(core) as srv:
        for ref in (REF, BIG):
            run = run_measured(home, "publish", ref, "--target", srv.url, "--json", *FAST)
            assert run.code == 0, run.out + run.err
            (result,) = json.loads(run.out)["results"]
            assert result["ok"] is True and result["registered"] is True
        assert [p.split(" ")[0] for p in srv.paths()].count("PUT") == 12  # six blobs each
        registered = run_measured(home, "register", REF, "--target", srv.url)
        assert registered.code == 0, registered.err
        absent = run_measured(home, "status", REF, "--target", srv.url)
        assert absent.code == 3, absent.err  # EXIT_NOT_FOUND: the fake keeps nothing
    _record("faithful_publish", run, 0)


def test_json_output_says_what_was_wrong(home: Path) -> None:
    with HostileServer(everywhere(json_reply(200, {"status": "success"}))()) as srv:
        run = run_measured(home, "publish", REF, "--target", srv.url, "--json", *FAST)
        paths = srv.paths()
    # --json keeps the error in its object and, as in every mode, adds the one stderr line
    assert run.code == 7 and "'model_id' is missing" in run.error_line()
    data = json.loads(run.out)
    (result,) = data["results"]
    assert data["ok"] is False and result["ok"] is False and result["exit_code"] == 7
    assert (
        result["error"]["type"] == "ProtocolError"
        and "'model_id' is missing" in result["error"]["message"]
    )
    assert paths == ["POST /v1/uploads"]  # nothing after the first wrong answer


@pytest.mark.parametrize("to", ["another_port", "itself"])
def test_redirects_are_not_followed(home: Path, to: str) -> None:
    with HostileServer(FakeCore()) as elsewhere:
        where = elsewhere.url + "/v1/uploads"

        def redirect(req: Seen) -> bytes:
            url = (
                where
                if to == "another_port"
                else f"http://127.0.0.1:{req.headers['host'].split(':')[1]}{req.raw_path}"
            )
            return reply(307, b"", headers={"Location": url})

        with HostileServer(redirect) as srv:
            run = run_measured(home, "publish", REF, "--target", srv.url, *FAST)
            seen = srv.paths()
        assert elsewhere.seen == []
    assert run.code == 7, run.err
    line = run.error_line()
    assert (
        srv.url in line and "a redirect to http://127.0.0.1:" in line and "does not follow" in line
    )
    assert seen == ["POST /v1/uploads"]
    _record(f"redirect_{to}", run, 0)


HEALTH: dict[str, tuple[Reply | bytes, str]] = {  # what /health answers, what the row says
    "html": (HTML, "did not answer a JSON object"),
    "drip": (
        [Drip(b'HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{"status":"healthy"}')],
        "slower than the 5 s plus 1 s per 64 KiB",
    ),
    "endless": (
        [reply(200, b"", length=False), Endless(b" " * 65536, ENDLESS)],
        "answer larger than 64 KiB",
    ),
    "escapes": (
        json_reply(200, {"status": "\x1b]0;owned\x07healthy"}),
        "says status '?]0;owned?healthy'",
    ),
}


@pytest.mark.parametrize("name", list(HEALTH))
def test_an_unhealthy_cluster_member_is_named_in_the_status_matrix(home: Path, name: str) -> None:
    """``axon status`` of a cluster asks each member's /health first."""
    health, says = HEALTH[name]
    with HostileServer(lie("health", lambda _c: lambda _r: health)()) as srv:
        write_config(home, {}, clusters={"c": {"instances": [srv.url]}})
        try:
            run = run_measured(home, "status", REF, "--target", "c", "--json")
        finally:
            (home / "config.yaml").unlink()
    assert run.code == 10, run.out + run.err  # none of the members agrees
    assert "Traceback" not in run.err and "\x1b" not in run.out
    (row,) = json.loads(run.out)["instances"]
    assert row["healthy"] is False and srv.url in row["note"] and says in row["note"], row
    assert run.seconds < WITHIN * 2, f"status took {run.seconds:.1f} s"  # /health, then status
    assert run.peak_rss < RSS_LIMIT
    _record(f"health_{name}", run, 0)


def _record(name: str, run: Run, sent: int) -> None:
    record("hostile_server_cases", name, f"{run.seconds:.1f} s, {run.peak_rss / MiB:.0f} MiB")
    record("hostile_server", "cases", 1, add=True)
    with_max = {"max_seconds": run.seconds, "max_rss_mib": run.peak_rss / MiB}
    from tests.stress.figures import FIGURES

    for key, value in with_max.items():
        if value > FIGURES["hostile_server"].get(key, 0):
            record("hostile_server", key, round(value, 1))
    if sent:
        record(
            "hostile_server",
            "max_bytes_a_server_sent",
            max(sent, FIGURES["hostile_server"].get("max_bytes_a_server_sent", 0)),
        )
