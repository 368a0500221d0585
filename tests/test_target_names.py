"""What a ``--target`` means, end to end with real programs: a mistyped name against a real
resolver (dnsmasq in a private network namespace: no query leaves the machine), tokens with a
real mlos-core that requires them, and the seed's SSH cluster whose members name a configured
instance (a real sshd)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from axon.errors import EXIT_CONFIG, EXIT_NOT_FOUND, EXIT_OK, EXIT_TRANSPORT
from tests.fixtures.common import free_port, require, require_program
from tests.fixtures.mlos import TOKENS
from tests.helpers import error_lines, run_axon, write_config

REPO = Path(__file__).resolve().parent.parent

# Runs inside `unshare --mount --net`: loopback only, /etc/resolv.conf -> a dnsmasq on
# 127.0.0.1:53 that knows core.example.internal and answers NXDOMAIN for everything else,
# an mlos-core on 127.0.0.1; then the axon commands; the results as JSON.
DRIVER = textwrap.dedent(
    """
    import json, os, socket, subprocess, sys, time
    work, dnsmasq, commands = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with open(f"{work}/resolv.conf", "w") as f:
        f.write("nameserver 127.0.0.1\\n")
    subprocess.run(["mount", "--bind", f"{work}/resolv.conf", "/etc/resolv.conf"], check=True)
    dns = subprocess.Popen([dnsmasq, "--keep-in-foreground", "--no-daemon",
        "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll", "--bind-interfaces",
        "--listen-address=127.0.0.1", "--port=53", "--user=root", "--pid-file=",
        "--log-queries", f"--log-facility={work}/dns.log", "--local=/#/",
        "--host-record=core.example.internal,127.0.0.1"])
    core = subprocess.Popen([sys.executable, "-m", "mlos_core", "serve", "--host",
        "127.0.0.1", "--port", os.environ["CORE_PORT"], "--models-dir", f"{work}/models",
        "--no-fsync"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for port in (53, int(os.environ["CORE_PORT"])):
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
        results = []
        for args in commands:
            args = [a.replace("CORE_PORT", os.environ["CORE_PORT"]) for a in args]
            started = time.monotonic()
            run = subprocess.run([sys.executable, "-m", "axon", *args], capture_output=True,
                                 text=True, timeout=120)
            results.append({"code": run.returncode, "out": run.stdout, "err": run.stderr,
                            "seconds": time.monotonic() - started})
    finally:
        core.terminate(); dns.terminate(); core.wait(); dns.wait()
    with open(f"{work}/results.json", "w") as f:
        json.dump(results, f)
    """
)


def in_private_network(tmp_path: Path, commands: list[list[str]]) -> tuple[list[Any], str]:
    """Run ``axon COMMAND`` for each of ``commands`` in a private network namespace (see
    DRIVER); returns their results and the DNS server's query log."""
    dnsmasq = require_program("dnsmasq", "dnsmasq-base")
    unshare = shutil.which("unshare")
    require(unshare is not None and os.geteuid() == 0, "needs root and unshare(1)")
    assert unshare is not None
    probe = subprocess.run([unshare, "--mount", "--net", "true"], capture_output=True)
    require(probe.returncode == 0, f"cannot make a network namespace: {probe.stderr!r}")
    work = tmp_path / "netns"
    (work / "models").mkdir(parents=True)
    env = {**os.environ, "CORE_PORT": str(free_port()), "PYTHONPATH": str(REPO / "src")}
    driver = work / "driver.py"
    driver.write_text(DRIVER)
    subprocess.run(
        [unshare, "--mount", "--net", sys.executable, str(driver), str(work), dnsmasq,
         json.dumps(commands)],
        check=True, timeout=600, env=env, cwd=REPO,
    )  # fmt: skip
    results = json.loads((work / "results.json").read_text())
    return results, (work / "dns.log").read_text()


def test_a_mistyped_target_name_fails_at_once_and_host_names_still_work(
    tmp_path: Path, axon_home: Path, installed_model: Any
) -> None:
    """``--target mlos-cluster-prd`` (one letter off): looked up once, refused at once (it
    took 16 s of six retried lookups), with the closest configured names; a host name that
    resolves is published to."""
    write_config(
        axon_home,
        {
            "mlos-core-1": {"endpoint": "http://127.0.0.1:9"},
            "stale": {"endpoint": "http://gone.example.internal:8080"},  # a host since removed
            "stale-ssh": {  # the same over SSH: ssh itself looks the name up
                "endpoint": "http://127.0.0.1:9",
                "access_method": "ssh",
                "ssh_host": "gone-ssh.example.internal",
                "storage_path": str(tmp_path / "nowhere"),
            },
        },
        clusters={"mlos-cluster-prod": {"instances": ["mlos-core-1"]}},
    )
    results, dns_log = in_private_network(
        tmp_path,
        [
            ["publish", str(installed_model), "--target", "mlos-cluster-prd"],
            ["status", str(installed_model), "-t", "http://mlos-clster-prod:8080"],
            ["publish", str(installed_model), "-t", "core.example.internal:CORE_PORT", "-q"],
            ["publish", str(installed_model), "-t", "stale"],
            ["publish", str(installed_model), "-t", "stale-ssh"],
        ],
    )
    typo, url_typo, valid, stale, stale_ssh = results
    assert typo["code"] == EXIT_NOT_FOUND, typo
    assert typo["seconds"] < 5, typo  # no retries, no backoff
    (line,) = error_lines(typo["err"])
    assert "'mlos-cluster-prd'" in line and "does not resolve" in line
    assert "did you mean 'mlos-cluster-prod'?" in line and "axon targets list" in line
    assert dns_log.count("query[A] mlos-cluster-prd") == 1  # resolved once
    assert url_typo["code"] == EXIT_NOT_FOUND and url_typo["seconds"] < 5, url_typo
    assert dns_log.count("query[A] mlos-clster-prod") == 1
    assert valid["code"] == EXIT_OK, valid  # core.example.internal resolves: published
    # a configured endpoint whose name is gone: not retried either
    assert stale["code"] == EXIT_TRANSPORT and stale["seconds"] < 5, stale
    assert "'gone.example.internal'" in stale["err"] and "does not resolve" in stale["err"]
    assert dns_log.count("query[A] gone.example.internal") == 1
    assert stale_ssh["code"] == EXIT_TRANSPORT and stale_ssh["seconds"] < 5, stale_ssh
    (line,) = error_lines(stale_ssh["err"])
    assert "'gone-ssh.example.internal' does not resolve" in line and "retry" not in line


@pytest.fixture
def token_server(mlos_server: Any, tmp_path: Path) -> Any:
    return mlos_server(tokens=TOKENS, no_fsync=True)


def test_tokens_unset_token_env_and_ad_hoc_targets(
    token_server: Any, axon_home: Path, make_model_dir: Any, install_model: Any
) -> None:
    srv = token_server
    ref = install_model(make_model_dir(), "alpha/tiny@v1")
    write_config(axon_home, {"core": {"endpoint": srv.url, "token_env": "ALPHA_TOKEN"}})
    no_token = {"ALPHA_TOKEN": "", "AXON_TOKEN": "", "MY_TOKEN": ""}
    before = srv.log()
    unset = run_axon("publish", str(ref), "-t", "core", env=no_token)
    assert unset.code == EXIT_CONFIG, unset.err
    (line,) = error_lines(unset.err)
    assert "'core'" in line and "ALPHA_TOKEN" in line and "not set" in line
    assert "nothing was sent" in line and "export ALPHA_TOKEN=" in line
    assert srv.log() == before  # not one request
    ok = run_axon(
        "publish", str(ref), "-t", "core", "-q", env={**no_token, "ALPHA_TOKEN": "alpha-token"}
    )
    assert ok.code == EXIT_OK, ok.err
    # an address typed on the command line: none sent -> says so and how to send one
    refused = run_axon("publish", str(ref), "-t", srv.url, "--retries", "0", env=no_token)
    assert refused.code == EXIT_TRANSPORT, refused.err
    (line,) = error_lines(refused.err)
    assert "none was sent" in line and "--token-env" in line and "AXON_TOKEN" in line
    assert "refused the token" not in line
    adhoc = run_axon(
        "publish", str(ref), "-t", srv.url, "-q", env={**no_token, "AXON_TOKEN": "alpha-token"}
    )
    assert adhoc.code == EXIT_OK, adhoc.err
    named = run_axon(
        "publish", str(ref), "-t", srv.url, "--token-env", "MY_TOKEN", "-q",
        env={**no_token, "MY_TOKEN": "alpha-token"},
    )  # fmt: skip
    assert named.code == EXIT_OK, named.err
    register = ("register", str(ref), "-t", srv.url)
    unsent = run_axon(*register, env=no_token)
    assert unsent.code != EXIT_OK and "none was sent" in unsent.err, unsent.err
    registered = run_axon(*register, "--token-env", "MY_TOKEN", env={"MY_TOKEN": "alpha-token"})
    assert registered.code == EXIT_OK, registered.err
    missing = run_axon("publish", str(ref), "-t", srv.url, "--token-env", "MY_TOKEN", env=no_token)
    assert missing.code == EXIT_CONFIG and "MY_TOKEN" in missing.err, missing.err
    value = run_axon("publish", str(ref), "-t", srv.url, "--token-env", "alpha-token", env=no_token)
    assert value.code == 2 and "not an environment variable name" in value.err, value.err
    assert "alpha-token" not in srv.log()  # the token is never logged


def test_the_seed_ssh_cluster_works_as_written(
    sshd: Any, mlos_server: Any, installed_model: Any, axon_home: Path
) -> None:
    """The seed's config: the instance says how to reach it (ssh user, key, storage path);
    the cluster lists it as ``mlos-core-1:PORT``. The member publishes over SSH and notifies."""
    srv = mlos_server(no_fsync=True)
    instance = sshd.config_target(srv.url, srv.models_dir)
    instance.pop("ssh_host")  # the seed names no ssh_host: the endpoint's host is used
    write_config(
        axon_home,
        {"mlos-core-1": instance},
        clusters={"mlos-cluster-prod": {"instances": [f"mlos-core-1:{srv.port}"]}},
    )
    run = run_axon("publish", str(installed_model), "-t", "mlos-cluster-prod", "--json")
    assert run.code == EXIT_OK, run.err
    (member,) = run.json()["results"][0]["instances"]
    assert (member["target"], member["method"]) == (f"mlos-core-1:{srv.port}", "ssh")
    assert member["notified"] and (srv.models_dir / installed_model.relpath).is_dir()
    shown = run_axon("targets", "show", "mlos-cluster-prod")
    assert shown.code == EXIT_OK, shown.err
    assert "mlos_targets.mlos-core-1.ssh_user" in shown.out
