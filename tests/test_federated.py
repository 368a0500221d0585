"""``mlos federated evaluate``: the real command against three real mlos-core participants,
each holding its own dataset; only aggregates travel."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from axon.federated import Participant, aggregate, weighted_mean
from tests.fixtures.onnx_models import linear_onnx, mlp_onnx, onnx_or_skip, upload, write_dataset
from tests.helpers import write_config

pytestmark = pytest.mark.slow

MODEL = "fl/federated-model@v1.0"
IDENTITY = np.eye(4, 3)
TOKENS = {  # the federation's tenant owns fl/; another tenant owns other/
    "tenants": {
        "fed": {"tokens": ["fed-token"], "namespaces": ["fl"]},
        "other": {"tokens": ["other-token"], "namespaces": ["other"]},
    }
}


def classified(n: int, correct: int, *, seed: int) -> dict[str, np.ndarray[Any, Any]]:
    """``n`` examples for the identity classifier, ``correct`` of them labelled right."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    predicted = np.argmax(x[:, :3], axis=1)
    labels = predicted.copy()
    labels[correct:] = (predicted[correct:] + 1) % 3
    return {"x": x, "labels": labels.astype(np.int64)}


def softmax_loss(data: dict[str, np.ndarray[Any, Any]]) -> float:
    logits = data["x"][:, :3].astype(np.float64)
    y = data["labels"]
    lse = np.log(np.exp(logits).sum(axis=1))
    return float(np.mean(lse - logits[np.arange(len(y)), y]))


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code, self.out, self.err = proc.returncode, proc.stdout, proc.stderr

    def json(self) -> Any:
        return json.loads(self.out)


def mlos_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "axon.cli.mlos_main", *args]


def run_mlos(*args: str, timeout: float = 120) -> Run:
    proc = subprocess.run(mlos_cmd(*args), capture_output=True, text=True, timeout=timeout)
    return Run(proc)


def start_sites(
    mlos_server: Any,
    tmp_path: Path,
    axon_home: Path,
    data: dict[str, dict[str, np.ndarray[Any, Any]]],
    model: bytes,
    **flags: Any,
) -> dict[str, Any]:
    """One participant per entry of ``data``, each holding its dataset as fl/federated-model
    and ``model`` as MODEL; the config names them and the cluster ``fed``."""
    servers = {}
    for name, arrays in data.items():
        root = tmp_path / f"data-{name}"
        write_dataset(root, "fl/federated-model", arrays)
        srv = mlos_server(datasets_dir=root, inference_threads=1, **flags)
        r = upload(
            srv.url,
            MODEL,
            {"model.onnx": model},
            headers={"Authorization": "Bearer fed-token"} if "tokens" in flags else None,
        )
        assert r.status_code == 201, r.text
        servers[name] = srv
    targets = {name: {"endpoint": srv.url, "access_method": "api"} for name, srv in servers.items()}
    if "tokens" in flags:
        for t in targets.values():
            t["token"] = "fed-token"
    write_config(axon_home, targets, clusters={"fed": {"instances": list(servers)}})
    return servers


@pytest.fixture
def sites_data() -> dict[str, dict[str, np.ndarray[Any, Any]]]:
    onnx_or_skip()
    return {
        "site-a": classified(40, 30, seed=1),
        "site-b": classified(100, 90, seed=2),
        "site-c": classified(60, 12, seed=3),
    }


def test_aggregate_is_the_example_weighted_mean(
    mlos_server: Any, tmp_path: Path, axon_home: Path, sites_data: Any
) -> None:
    start_sites(mlos_server, tmp_path, axon_home, sites_data, linear_onnx(IDENTITY, np.zeros(3)))
    run = run_mlos("federated", "evaluate", MODEL, "--target", "fed", "--json")
    assert run.code == 0, run.err
    result = run.json()
    parts = {p["name"]: p for p in result["participants"]}
    assert [parts[n]["examples"] for n in ("site-a", "site-b", "site-c")] == [40, 100, 60]
    assert parts["site-a"]["metrics"]["accuracy"] == 30 / 40
    assert parts["site-b"]["metrics"]["accuracy"] == 90 / 100
    assert parts["site-c"]["metrics"]["accuracy"] == 12 / 60
    agg = result["aggregate"]
    assert agg["participants"] == 3 and agg["examples"] == 200
    # by hand, from the participants' own answers: sum(n_i * m_i) / sum(n_i)
    for metric in ("accuracy", "loss"):
        want = sum(p["examples"] * p["metrics"][metric] for p in parts.values()) / 200
        assert agg["metrics"][metric] == pytest.approx(want, rel=1e-12)
    assert agg["metrics"]["accuracy"] == pytest.approx(132 / 200, abs=1e-12)
    # ... which is the metric over all the examples at once
    everything = {k: np.concatenate([d[k] for d in sites_data.values()]) for k in ("x", "labels")}
    assert agg["metrics"]["loss"] == pytest.approx(softmax_loss(everything), rel=1e-5)
    assert len({p["build"] for p in parts.values()}) == 1

    # a dataset whose arrays do not fit the model: each participant says why, by name
    write_dataset(
        tmp_path / "data-site-a", "fl/bad", {"x": np.zeros((20, 5)), "labels": np.zeros(20)}
    )
    bad = run_mlos("federated", "evaluate", MODEL, "--target", "fed", "--dataset", "fl/bad")
    assert bad.code == 10, (bad.out, bad.err)
    assert "site-a  error:" in bad.out and "array 'x' has shape [20, 5]" in bad.out
    assert "site-b  error:" in bad.out and "dataset 'fl/bad' is not on this instance" in bad.out
    # a refusal that explains itself is not sent to the server's log
    assert "see the server's log" not in bad.out, bad.out
    assert "mlos: error: 0 of 3 participants evaluated, needed 3: 3 failed" in bad.err

    human = run_mlos("federated", "evaluate", MODEL, "--target", "fed", "--metric", "accuracy")
    assert human.code == 0, human.err
    lines = human.out.splitlines()
    assert any(line.split()[:3] == ["site-b", "100", "examples"] for line in lines), human.out
    assert "aggregate over 3 of 3 participants (200 examples): accuracy 0.6600" in human.out


def test_a_participant_with_another_build_is_named_and_left_out(
    mlos_server: Any, tmp_path: Path, axon_home: Path, sites_data: Any
) -> None:
    servers = start_sites(
        mlos_server, tmp_path, axon_home, sites_data, linear_onnx(IDENTITY, np.zeros(3))
    )
    other = linear_onnx(IDENTITY * 2, np.zeros(3))
    assert upload(servers["site-c"].url, MODEL, {"model.onnx": other}).status_code == 201

    run = run_mlos("federated", "evaluate", MODEL, "--target", "fed")
    assert run.code == 9, (run.out, run.err)
    assert "site-c  left out: holds another build of fl/federated-model@v1.0" in run.out
    assert "aggregate over 2 of 3 participants (140 examples): accuracy 0.8571" in run.out
    assert "(build " in run.out and ", held by most participants)" in run.out
    # left out for its build, not counted as a participant that did not answer
    assert "mlos: error: 2 of 3 participants evaluated, needed 3: 1 left out (site-c)" in run.err
    assert "failed" not in run.err and "did not answer" not in run.err

    assert run_mlos("federated", "evaluate", MODEL, "-t", "fed", "--min-success", "2").code == 0

    before = [srv.log().count("evaluating fl/") for srv in servers.values()]
    strict = run_mlos("federated", "evaluate", MODEL, "--target", "fed", "--strict", "--json")
    assert strict.code == 10, strict.err
    assert [p["ok"] for p in strict.json()["participants"]] == [False, False, False]
    assert [srv.log().count("evaluating fl/") for srv in servers.values()] == before


def test_a_participant_that_dies_mid_evaluation_is_reported(
    mlos_server: Any, tmp_path: Path, axon_home: Path
) -> None:
    onnx_or_skip()
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(64, 4096)), rng.normal(size=(4096, 3))
    model = mlp_onnx(w1, w2)

    def data(n: int) -> dict[str, Any]:
        return {"x": rng.normal(size=(n, 64)).astype(np.float32), "labels": np.zeros(n, np.int64)}

    servers = start_sites(
        mlos_server,
        tmp_path,
        axon_home,
        {"site-a": data(30), "site-b": data(50), "slow": data(30000)},
        model,
    )
    proc = subprocess.Popen(
        mlos_cmd("federated", "evaluate", MODEL, "--target", "fed", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while "evaluating fl/federated-model@v1.0" not in servers["slow"].log():
            assert time.monotonic() < deadline, servers["slow"].log()
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        servers["slow"].kill()  # kill -9 while it evaluates
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 9, err
    result = json.loads(out)
    parts = {p["name"]: p for p in result["participants"]}
    assert not parts["slow"]["ok"] and servers["slow"].url in parts["slow"]["error"]
    assert parts["site-a"]["ok"] and parts["site-b"]["ok"]
    assert result["aggregate"]["participants"] == 2 and result["aggregate"]["examples"] == 80


def test_an_unreachable_participant_and_tenants(
    mlos_server: Any, tmp_path: Path, axon_home: Path, sites_data: Any
) -> None:
    servers = start_sites(
        mlos_server,
        tmp_path,
        axon_home,
        sites_data,
        linear_onnx(IDENTITY, np.zeros(3)),
        tokens=TOKENS,
    )
    servers["site-b"].stop()
    run = run_mlos("federated", "evaluate", MODEL, "--target", "fed", "--json")
    assert run.code == 9, run.err
    result = run.json()
    parts = {p["name"]: p for p in result["participants"]}
    assert "cannot connect" in parts["site-b"]["error"]
    assert result["aggregate"]["examples"] == 100
    assert result["aggregate"]["metrics"]["accuracy"] == pytest.approx(42 / 100)
    # --strict names the participant that failed and why, not "another differs"
    strict = run_mlos("federated", "evaluate", MODEL, "--target", "fed", "--strict")
    assert strict.code == 10, (strict.out, strict.err)
    a_line = next(line for line in strict.out.splitlines() if "site-a" in line)
    assert "not evaluated: --strict, and site-b failed: " in a_line
    assert "cannot connect" in a_line and "differs" not in strict.out

    # a token whose tenant does not own the namespace evaluates nothing
    config = axon_home / "config.yaml"
    config.write_text(config.read_text().replace("fed-token", "other-token"))
    run = run_mlos("federated", "evaluate", MODEL, "--target", "fed")
    assert run.code == 10, (run.out, run.err)
    assert "403" in run.out and "may not evaluate" in run.out


def test_the_local_cache_s_build_is_the_one_evaluated(
    mlos_server: Any,
    tmp_path: Path,
    axon_home: Path,
    sites_data: Any,
    install_model: Any,
) -> None:
    """Two participants hold one build, the third the build the local cache holds (the one
    axon publish sends and axon promote pins): the cache's build is evaluated, the
    majority's holders are left out, and the header says why."""
    two = {k: sites_data[k] for k in ("site-a", "site-b")}
    servers = start_sites(mlos_server, tmp_path, axon_home, two, linear_onnx(IDENTITY, np.zeros(3)))
    write_dataset(tmp_path / "data-site-c", "fl/federated-model", sites_data["site-c"])
    servers["site-c"] = mlos_server(datasets_dir=tmp_path / "data-site-c", inference_threads=1)
    targets = {n: {"endpoint": srv.url, "access_method": "api"} for n, srv in servers.items()}
    write_config(axon_home, targets, clusters={"fed": {"instances": list(targets)}})
    source = tmp_path / "cached-build"
    source.mkdir()
    (source / "model.onnx").write_bytes(linear_onnx(IDENTITY * 2, np.zeros(3)))
    install_model(source, MODEL)
    published = subprocess.run(
        [sys.executable, "-m", "axon", "publish", MODEL, "--target", "site-c"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert published.returncode == 0, published.stderr

    run = run_mlos("federated", "evaluate", MODEL, "--target", "fed")
    assert run.code == 9, (run.out, run.err)
    assert ", the local cache's) on fed" in run.out
    assert "site-a  left out: holds another build of fl/federated-model@v1.0 than the local " in (
        run.out
    )
    assert "aggregate over 1 of 3 participants (60 examples)" in run.out
    assert "2 left out (site-a, site-b)" in run.err
    assert servers["site-c"].log().count("evaluating fl/") == 1


def test_a_tie_between_builds_is_named_and_nothing_is_evaluated(
    mlos_server: Any, tmp_path: Path, axon_home: Path, sites_data: Any
) -> None:
    two = {k: sites_data[k] for k in ("site-a", "site-b")}
    servers = start_sites(mlos_server, tmp_path, axon_home, two, linear_onnx(IDENTITY, np.zeros(3)))
    other = linear_onnx(IDENTITY * 2, np.zeros(3))
    assert upload(servers["site-b"].url, MODEL, {"model.onnx": other}).status_code == 201

    run = run_mlos("federated", "evaluate", MODEL, "--target", "fed", "--json")
    assert run.code == 10, (run.out, run.err)
    result = run.json()
    assert result["build"] is None and result["build_chosen_by"] == "tie"
    for p in result["participants"]:
        assert p["left_out"] and "in equal numbers (site-a: " in p["error"]
        assert "site-b: " in p["error"] and "install the build you mean" in p["error"]
    assert all(srv.log().count("evaluating fl/") == 0 for srv in servers.values())


class Silent:
    """A participant that answers GET (the manifest a real one serves) and accepts every
    POST without ever answering it: an evaluation that never ends."""

    def __init__(self, manifest: bytes) -> None:
        import socket
        import threading

        self.manifest = manifest
        self.posted = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[Any] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                head += chunk
            if head.startswith(b"GET "):
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(self.manifest)}\r\n".encode()
                    + b"Connection: close\r\n\r\n"
                    + self.manifest
                )
            else:
                self.posted.set()  # and never a byte back

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_ctrl_c_ends_at_once_while_a_participant_never_answers(
    mlos_server: Any, tmp_path: Path, axon_home: Path, sites_data: Any
) -> None:
    """Ctrl-C while a participant has not answered its evaluation (it may take --timeout,
    600 s): mlos stops at once, "aborted", exit 130, as axon publish does."""
    import signal

    import httpx

    servers = start_sites(
        mlos_server,
        tmp_path,
        axon_home,
        {"site-a": sites_data["site-a"]},
        linear_onnx(IDENTITY, np.zeros(3)),
    )
    manifest = httpx.get(f"{servers['site-a'].url}/v1/models/{MODEL}/manifest", timeout=30)
    assert manifest.status_code == 200, manifest.text
    silent = Silent(manifest.content)
    try:
        targets = {
            "site-a": {"endpoint": servers["site-a"].url, "access_method": "api"},
            "silent": {"endpoint": silent.url, "access_method": "api"},
        }
        write_config(axon_home, targets, clusters={"fed": {"instances": list(targets)}})
        proc = subprocess.Popen(
            mlos_cmd("federated", "evaluate", MODEL, "--target", "fed", "--timeout", "600"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert silent.posted.wait(60), proc.poll()
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            interrupted = time.monotonic()
            _out, err = proc.communicate(timeout=60)
            stopped_after = time.monotonic() - interrupted
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, err
        assert stopped_after < 3, f"took {stopped_after:.1f} s to stop after Ctrl-C"
        assert "mlos: aborted" in err and "Traceback" not in err
    finally:
        silent.close()


def test_bad_command_lines(axon_home: Path) -> None:
    write_config(axon_home, {"one": {"endpoint": "http://127.0.0.1:9", "access_method": "api"}})
    run = run_mlos("federated", "evaluate", "fl/-bad@v1", "--target", "one")
    assert run.code == 4 and "mlos: error: invalid model reference" in run.err
    run = run_mlos("federated", "evaluate", MODEL, "--target", "no_such_target")
    assert run.code == 3 and "mlos: error:" in run.err
    run = run_mlos("federated", "evaluate", MODEL, "--target", "one", "--min-success", "x")
    assert run.code == 2 and "--min-success" in run.err
    run = run_mlos("federated", "evaluate", MODEL, "--target", "one", "--metric", "f1")
    assert run.code == 2
    assert "Traceback" not in run.err


def test_weighted_mean_by_hand() -> None:
    assert weighted_mean([(10, 0.5), (30, 1.0)]) == pytest.approx(35 / 40)
    assert weighted_mean([(10, None), (30, 0.25)]) == 0.25
    assert weighted_mean([]) is None
    parts = [Participant("a", "u", examples=1, metrics={"loss": 2.0})]
    parts.append(Participant("b", "u", examples=3, metrics={"loss": 6.0}))
    parts.append(Participant("c", "u", examples=100, metrics={"loss": 1e9}, error="down"))
    assert aggregate(parts, ["loss"]) == {"loss": 5.0}
