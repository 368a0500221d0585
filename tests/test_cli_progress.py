"""Progress without a terminal: plain lines on stderr while a real, throttled publish runs
(a real mlos-core behind the loopback proxy), retry waits included; and the sink's rules
(10% steps, rates without the bytes that needed no work) on their own."""

from __future__ import annotations

import io
import re
import sys
import threading
import time

import pytest

from axon.cli.progress_lines import PlainProgress, progress_mode
from tests.fixtures.mlos import ServerFactory
from tests.fixtures.proxy import ProxyFactory
from tests.helpers import run_publish, start_publish

MiB = 1024 * 1024


@pytest.mark.slow
def test_throttled_publish_prints_progress_lines(
    make_model_dir, install_model, mlos_server: ServerFactory, tcp_proxy: ProxyFactory
) -> None:  # type: ignore[no-untyped-def]
    ref = install_model(make_model_dir("slow", weights_size=3 * MiB), "hf/slow@v1")
    srv = mlos_server()
    proxy = tcp_proxy(srv.port)
    proxy.throttle(1 * MiB)  # ~3 s for the weights
    proc = run_publish(ref, proxy.url, interval=0.5, timeout=120)
    assert proc.code == 0, proc.err
    lines = [x for x in proc.err.splitlines() if x.startswith("axon: progress: ")]
    ours = [x for x in lines if x.startswith(f"axon: progress: {proxy.url}: ")]
    assert len(ours) >= 3, proc.err  # a line every 0.5 s or 10% over ~3 s
    percents = [int(m.group(1)) for x in ours if (m := re.search(r": (\d+)% \(", x))]
    assert percents and percents == sorted(percents), ours
    assert any("MiB/s" in x for x in ours), ours
    assert ours[-1].endswith(("s", "work")) and "done" in ours[-1], ours
    assert "axon: progress" not in proc.out  # stdout is the result only
    assert proc.out.startswith(f"published {ref} -> {proxy.url}")


@pytest.mark.slow
def test_retry_waits_are_reported(
    installed_model, mlos_server: ServerFactory, tcp_proxy: ProxyFactory
) -> None:  # type: ignore[no-untyped-def]
    srv = mlos_server()
    proxy = tcp_proxy(srv.port)
    proxy.refuse = True  # the instance is "down" for the first attempts
    proc = start_publish(installed_model, proxy.url, interval=0.3)
    threading.Timer(2.5, lambda: setattr(proxy, "refuse", False)).start()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert re.search(r"retrying in \d", err), err
    waiting = [x for x in err.splitlines() if "waiting, " in x and "since:" in x]
    assert waiting, err  # while it waited, the line said so and why
    assert proxy.url in waiting[0]
    assert out.startswith("published")


def test_ten_percent_steps_and_honest_rates(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    stream = io.StringIO()
    sink = PlainProgress(stream, interval=10.0)
    sink.begin("verify", "checking a/b@1", 1000)
    sink.skip("verify", 900)  # known to the hash index: no work, no rate
    clock[0] += 2.0
    sink.advance("verify", 50)
    sink.end("verify")
    sink.begin("core-1:w.bin", "w.bin", 100 * MiB)
    for _ in range(100):
        clock[0] += 0.5
        sink.advance("core-1:w.bin", MiB)
    sink.end("core-1:w.bin")
    with sink:
        pass
    text = stream.getvalue().splitlines()
    hashing = [x for x in text if "checking a/b@1" in x]
    assert hashing and "95%" in hashing[0]
    assert "25 B/s" in hashing[0]  # 50 bytes hashed in 2 s, not 950
    sends = [x for x in text if x.startswith("axon: progress: core-1: ")]
    steps = [int(m.group(1)) for x in sends if (m := re.search(r": (\d+)% ", x))]
    assert steps == [10, 20, 30, 40, 50, 60, 70, 80, 90], sends
    assert "2.0 MiB/s" in sends[0]
    assert sends[-1].startswith("axon: progress: core-1: done, 100.0 MiB")


def test_quick_publish_prints_no_progress() -> None:
    stream = io.StringIO()
    with PlainProgress(stream, interval=10.0) as sink:
        sink.begin("t:f", "f", 100)
        sink.advance("t:f", 100)
        sink.end("t:f")
    assert stream.getvalue() == ""


def test_progress_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AXON_PROGRESS", raising=False)
    assert progress_mode(enabled=True, stream=io.StringIO()) == "lines"
    assert progress_mode(enabled=False) == "off"
    monkeypatch.setenv("AXON_PROGRESS", "off")
    assert progress_mode(enabled=True, stream=io.StringIO()) == "off"


def test_bar_rates_leave_out_skipped_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal: the hashing bar's rate counts hashed bytes, not indexed ones, and a
    task at 100% that has not ended says it is finishing (an S3 upload completing)."""
    from rich.console import Console

    from axon.cli.progress_view import RichProgress

    clock = [50.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    bars = RichProgress(console)
    bars.begin("verify", "checking", 10 * MiB * 1024)
    bars.skip("verify", 10 * MiB * 1024 - MiB)  # 10 GiB known, only 1 MiB hashed
    clock[0] += 1.0
    bars.advance("verify", MiB)
    assert bars.rate_of("verify") == pytest.approx(MiB, rel=0.01)
    assert "finishing" in bars.state_of("verify")
    bars.end("verify")
    assert "finishing" not in bars.state_of("verify")


def test_bars_begin_while_another_thread_draws_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files begin (rich's add_task draws the bars) while another thread draws them (rich
    holds its Live lock while our rate/state columns read the task's work): neither thread
    may wait for the other forever. Fails (rather than hangs) within 60 s on a deadlock."""
    from rich.console import Console

    from axon.cli.progress_view import RichProgress

    # The Live redirects stdout/stderr while it runs; a stuck one must not keep them.
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    for _round in range(3):
        sink = RichProgress(Console(file=io.StringIO(), force_terminal=True, width=120))
        sink.__enter__()
        drawing = threading.Event()

        def draw(sink: RichProgress = sink, drawing: threading.Event = drawing) -> None:
            while not drawing.is_set():
                sink._bars.refresh()  # what rich's refresh thread does, only more often
                time.sleep(0.0005)

        def worker(i: int, sink: RichProgress = sink) -> None:
            for k in range(4):
                key = f"inst:w{i}-f{k}.bin"
                sink.begin(key, f"w{i}-f{k}.bin", 1000)
                sink.advance(key, 500)
                sink.end(key)

        drawer = threading.Thread(target=draw, daemon=True)
        workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(6)]
        drawer.start()
        for t in workers:
            t.start()
        deadline = time.monotonic() + 20
        for t in workers:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        drawing.set()
        drawer.join(timeout=5)
        stuck = [t.name for t in [drawer, *workers] if t.is_alive()]
        # On a deadlock, stopping the Live would wait for its lock forever: fail instead.
        assert not stuck, f"progress threads stuck (deadlock): {stuck}"
        sink.__exit__(None, None, None)
        assert len(sink._bars.tasks) == 24
        assert all(t.finished for t in sink._bars.tasks)
