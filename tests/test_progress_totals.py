"""A target's progress line is a percentage of everything the target receives, from the
first line on: a publish tells the sink each target's whole total before its files begin
(:func:`axon.progress.expect`), so files of 8 MiB or more, which start one after another,
neither grow the total nor make the percentage step back; a resumed part counts as done,
not as sent. Real publishes through a throttled loopback proxy to a real mlos-core."""

from __future__ import annotations

import io
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from axon.cli.progress_lines import PlainProgress
from axon.progress import expect, skip
from modelpkg.refs import ModelRef
from tests.fixtures.mlos import ServerFactory
from tests.fixtures.models import InstallModel, MakeModelDir
from tests.fixtures.proxy import ProxyFactory
from tests.helpers import run_publish, start_publish

MiB = 1024 * 1024
LINE = re.compile(r": (\d+)% \(([\d.]+) (B|KiB|MiB|GiB) of ([\d.]+) (B|KiB|MiB|GiB)")


def _big_model(
    make_model_dir: MakeModelDir, install_model: InstallModel, name: str
) -> tuple[ModelRef, int]:
    """Three files of 8 MiB or more (each its own task), plus the small ones (one batch)."""
    shards = {f"shard-{i}.bin": bytes([i]) * (8 * MiB + i * 4096) for i in (2, 3)}
    source = make_model_dir(name, weights_size=8 * MiB, extra=shards)
    total = sum(p.stat().st_size for p in Path(source).rglob("*") if p.is_file())
    return install_model(source, f"hf/{name}@v1"), total


def _progress(stderr: str, url: str) -> list[tuple[int, str]]:
    """(percent, "of" size text) of the target's percentage lines, in order."""
    found = []
    for line in stderr.splitlines():
        if line.startswith(f"axon: progress: {url}: ") and (m := LINE.search(line)):
            found.append((int(m.group(1)), f"{m.group(4)} {m.group(5)}"))
    return found


@pytest.mark.slow
def test_whole_total_from_the_first_line_and_never_back(
    make_model_dir: MakeModelDir,
    install_model: InstallModel,
    mlos_server: ServerFactory,
    tcp_proxy: ProxyFactory,
) -> None:
    ref, total = _big_model(make_model_dir, install_model, "shards")
    srv = mlos_server()
    proxy = tcp_proxy(srv.port)
    proxy.throttle(6 * MiB)  # ~4 s for ~24 MiB
    proc = run_publish(ref, proxy.url, interval=0.4)
    assert proc.code == 0, proc.err
    lines = _progress(proc.err, proxy.url)
    assert len(lines) >= 3, proc.err
    whole = f"{total / MiB:.1f} MiB"
    assert lines[0][1] == whole, proc.err  # the first line already knows the whole
    assert {of for _pct, of in lines} == {whole}, proc.err
    percents = [pct for pct, _of in lines]
    assert percents == sorted(percents), proc.err  # never steps back as files start
    assert percents[0] < 50, proc.err  # it really was under way
    assert f"axon: progress: {proxy.url}: done, {whole} in " in proc.err, proc.err


@pytest.mark.slow
def test_a_resumed_publish_counts_the_resumed_part_as_done(
    make_model_dir: MakeModelDir,
    install_model: InstallModel,
    mlos_server: ServerFactory,
    tcp_proxy: ProxyFactory,
) -> None:
    ref, _total = _big_model(make_model_dir, install_model, "resumed")
    srv = mlos_server()
    proxy = tcp_proxy(srv.port)
    proxy.throttle(4 * MiB)
    first = start_publish(ref, proxy.url, interval=0.3)
    seen = ""
    assert first.stderr is not None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # stop it past the first big file, mid-way
        line = first.stderr.readline()
        seen += line
        m = LINE.search(line)
        if m and int(m.group(1)) >= 45:
            break
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    proxy.drop_all()  # the connection is gone: nothing of it still in flight reaches the server
    time.sleep(1)
    assert LINE.search(seen), seen

    proxy.throttle(6 * MiB)
    proc = run_publish(ref, proxy.url, interval=0.3)
    assert proc.code == 0, proc.err
    lines = _progress(proc.err, proxy.url)
    assert lines, proc.err
    percents = [pct for pct, _of in lines]
    assert percents == sorted(percents), proc.err
    # the total is what this run needed (not every file: some were there), and the part
    # the server kept of a half-sent file is done from the first line on, without work
    needed = sum(8 * MiB + i * 4096 for i in (2, 3))  # killed mid-way through shard-2
    assert lines[0][1] == f"{needed / MiB:.1f} MiB", (seen, proc.err)
    assert percents[0] >= 5, proc.err
    final = [x for x in proc.err.splitlines() if f"{proxy.url}: done" in x]
    assert final and "needed no work" in final[-1], proc.err


def test_expected_total_with_a_resumed_offset_and_a_retry() -> None:
    """The sink on its own: the whole total up front; a resumed offset is done without
    work (no rate); a retry's expect sets what is done to what the target holds."""
    out = io.StringIO()
    sink = PlainProgress(out, interval=60)
    expect(sink, "core", 100 * MiB)
    time.sleep(1.05)  # past the least gap between two lines
    sink.begin("core:a.bin", "a.bin", 40 * MiB)
    skip(sink, "core:a.bin", 20 * MiB)  # resumed: 20% done, nothing sent
    first = out.getvalue().splitlines()
    assert len(first) == 1 and "20% (20.0 MiB of 100.0 MiB, " in first[0], first
    assert "/s" not in first[0]  # no rate from bytes that were not sent
    time.sleep(1.05)
    sink.advance("core:a.bin", 20 * MiB)
    sink.end("core:a.bin")
    sink.begin("core:b.bin", "b.bin", 60 * MiB)  # the second big file: the total stays
    time.sleep(1.05)
    sink.advance("core:b.bin", 10 * MiB)
    assert "50% (50.0 MiB of 100.0 MiB" in out.getvalue(), out.getvalue()
    sink.end("core:b.bin", ok=False, note="connection lost")
    expect(sink, "core", 100 * MiB, 40 * MiB)  # the retry: a.bin is there, b.bin is not
    sink.begin("core:b.bin", "b.bin", 60 * MiB)
    skip(sink, "core:b.bin", 8 * MiB)  # the server kept 8 MiB of it
    time.sleep(1.05)
    sink.advance("core:b.bin", 30 * MiB)
    assert "78% (78.0 MiB of 100.0 MiB" in out.getvalue(), out.getvalue()
    sink.advance("core:b.bin", 22 * MiB)
    sink.end("core:b.bin")
    with sink:
        pass
    text = out.getvalue()
    percents = [int(m.group(1)) for m in LINE.finditer(text)]
    assert percents == sorted(percents), text
    assert "of 100.0 MiB" in text and "of 60.0 MiB" not in text, text
    assert "core: done, 100.0 MiB in " in text.splitlines()[-1], text


class Totals:
    """A progress sink that records what a publish says about totals, in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, str, int | None, int]] = []
        self.moved: dict[str, int] = {}  # key -> bytes advanced or skipped

    def begin(self, key: str, description: str, total: int | None = None) -> None:
        with self.lock:
            self.events.append(("begin", key, total, 0))

    def advance(self, key: str, nbytes: int) -> None:
        with self.lock:
            self.moved[key] = self.moved.get(key, 0) + nbytes

    def skip(self, key: str, nbytes: int) -> None:
        self.advance(key, nbytes)

    def end(self, key: str, *, ok: bool = True, note: str = "") -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def expect(self, target: str, total: int, done: int = 0) -> None:
        with self.lock:
            self.events.append(("expect", target, total, done))


def test_a_storage_publish_gives_its_whole_total_before_its_files(
    make_model_dir: MakeModelDir, install_model: InstallModel, tmp_path: Path
) -> None:
    """Shared storage goes the same way as an instance: one expect, then the files."""
    from axon.publish import PublishOptions, publish

    ref, total = _big_model(make_model_dir, install_model, "stored")
    shared = tmp_path / "shared"
    shared.mkdir()
    rec = Totals()
    result = publish(ref, str(shared), PublishOptions(retries=0), rec)
    assert result.exit_code == 0, result.to_dict()
    expects = [e for e in rec.events if e[0] == "expect"]
    assert len(expects) == 1 and expects[0][2:] == (total, 0), rec.events
    target = expects[0][1]
    files = [e for e in rec.events if e[0] == "begin" and e[1].startswith(f"{target}:")]
    assert len(files) == 4, rec.events  # the small files together, then each big one
    assert rec.events.index(expects[0]) < rec.events.index(files[0])
    assert sum(rec.moved.get(e[1], 0) for e in files) == total


@pytest.mark.slow
def test_a_cluster_members_line_is_what_it_receives(
    make_model_dir: MakeModelDir,
    install_model: InstallModel,
    mlos_server: ServerFactory,
    axon_home: Path,
) -> None:
    """A member holding most of the model's bytes already: its line's total is what it
    lacks, not the model's size (it would never pass a third of it)."""
    from axon.publish import PublishOptions, publish
    from tests.fixtures.cluster import cluster_of
    from tests.helpers import write_config

    first, _ = _big_model(make_model_dir, install_model, "first")
    weights = 8 * MiB + 40960  # the second version's own weights: another content
    shards = {f"shard-{i}.bin": bytes([i]) * (8 * MiB + i * 4096) for i in (2, 3)}
    source = make_model_dir("second", weights_size=weights, extra=shards)
    second = install_model(source, "hf/second@v1")
    total = sum(p.stat().st_size for p in Path(source).rglob("*") if p.is_file())
    own = (Path(source) / "model.safetensors").stat().st_size

    holder, empty = mlos_server(no_fsync=True), mlos_server(no_fsync=True)
    opts = PublishOptions(retries=0)
    assert publish(first, holder.url, opts).exit_code == 0  # the shards and small files
    write_config(axon_home, clusters={"prod": cluster_of(holder, empty)})
    rec = Totals()
    result = publish(second, "prod", opts, rec)
    assert result.exit_code == 0, result.to_dict()
    lines = {e[1]: e for e in rec.events if e[0] == "begin"}
    expects = {e[1]: e for e in rec.events if e[0] == "expect"}
    assert set(expects) == {holder.url, empty.url} <= set(lines), rec.events
    assert lines[holder.url][2] == total  # the line starts at the model's size ...
    assert expects[holder.url][2:] == (own, 0), rec.events  # ... then what it lacks
    assert rec.moved[holder.url] == own
    assert expects[empty.url][2:] == (total, 0) and rec.moved[empty.url] == total


def test_a_member_line_takes_what_the_member_receives() -> None:
    """A cluster member's one line (keyed by its name, labelled by its description) starts
    at the model's size; the member's expect makes it what the member lacks."""
    out = io.StringIO()
    sink = PlainProgress(out, interval=60)
    sink.begin("core-1", "core-1 (api)", 100 * MiB)
    expect(sink, "core-1", 30 * MiB)
    time.sleep(1.05)
    sink.advance("core-1", 15 * MiB)
    sink.end("core-1")
    with sink:
        pass
    text = out.getvalue()
    assert "core-1 (api): 50% (15.0 MiB of 30.0 MiB" in text, text
    assert "core-1 (api): done, 15.0 MiB" in text, text
