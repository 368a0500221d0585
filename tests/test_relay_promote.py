"""``axon promote`` and ``axon sync`` on real ``mlos-core`` processes: production pulls the
build staging holds (no model bytes from the publisher, counted through a proxy), a
promotion is refused when staging disagrees, and a sync heals a lagging member."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from axon.cache import Cache
from axon.errors import EXIT_ALL_FAILED, EXIT_INTEGRITY, EXIT_OK, EXIT_PARTIAL
from axon.publish import PublishOptions, publish
from axon.publish.promote import promote
from axon.publish.sync import sync
from modelpkg.refs import ModelRef
from tests.fixtures.cluster import registered
from tests.fixtures.relay import add_cluster, relay_config, tree_of
from tests.helpers import run_axon, write_config

pytestmark = pytest.mark.slow

MiB = 1024 * 1024


@pytest.fixture
def big_model(install_model: Any, make_model_dir: Any) -> ModelRef:
    ref: ModelRef = install_model(make_model_dir(weights_size=4 * MiB), "hf/promo-bert@v1")
    return ref


def opts(**kw: Any) -> PublishOptions:
    return PublishOptions(retries=0, timeout=20.0, override_timeout=True, **kw)


def cached_tree(ref: ModelRef) -> dict[str, str]:
    import hashlib

    cached = Cache.from_config().get(ref)
    return {
        f.path: hashlib.sha256((cached.path / f.path).read_bytes()).hexdigest()
        for f in cached.manifest.files
    }


def staging_and_prod(peered: Any, axon_home: Path, n_prod: int = 3) -> tuple[list[Any], list[Any]]:
    staging = peered(2)
    prod = peered(n_prod, extra_peers=[s.url for s in staging])
    relay_config(axon_home, staging, "staging", relay=True)
    add_cluster(axon_home, prod, "prod", first=2, relay=True)
    return staging, prod


def test_promote_pulls_from_staging_and_sends_no_model_bytes(
    peered: Any, tcp_proxy: Any, big_model: ModelRef, axon_home: Path
) -> None:
    staging, prod = staging_and_prod(peered, axon_home)
    assert publish(big_model, "staging", opts()).exit_code == EXIT_OK
    # the publisher reaches every instance through a proxy that counts its bytes; the
    # instances reach each other directly (their advertised addresses)
    proxies = [tcp_proxy(s.port) for s in staging + prod]
    names = [f"core-{i}" for i in range(len(proxies))]
    pairs = zip(names, proxies, strict=True)
    targets = {n: {"endpoint": p.url, "storage_type": "api"} for n, p in pairs}
    write_config(
        axon_home,
        targets,
        clusters={
            "staging": {"instances": names[:2], "relay": True},
            "prod": {"instances": names[2:], "relay": True},
        },
    )
    result = promote(big_model, "staging", "prod", opts())
    assert result.exit_code == EXIT_OK, "\n".join(line.text for line in result.lines())
    moved = sum(p.bytes_up + p.bytes_down for p in proxies)
    assert moved < 4 * MiB / 20, f"{moved} bytes through the publisher's proxies"
    assert result.cluster.publisher_bytes == 0
    assert result.build.pinned_by == "cache"
    for server in prod:
        assert tree_of(server, big_model) == cached_tree(big_model)
        assert registered(server, big_model)
    text = "\n".join(line.text for line in result.lines())
    assert "pulled from core-0" in text or "pulled from core-1" in text
    assert "from staging to prod" in text


def test_promotion_is_refused_when_staging_disagrees(
    peered: Any,
    install_model: Any,
    make_model_dir: Any,
    installed_model: ModelRef,
    axon_home: Path,
) -> None:
    _staging, prod = staging_and_prod(peered, axon_home, n_prod=1)
    assert publish(installed_model, "core-0", opts()).exit_code == EXIT_OK
    # core-1 gets another build under the same reference
    install_model(make_model_dir(seed=7, weights_size=8192), str(installed_model))
    assert publish(installed_model, "core-1", opts()).exit_code == EXIT_OK
    # the cache holds core-1's build: core-0 is the one that differs
    run = run_axon("promote", str(installed_model), "--from", "staging", "--to", "prod")
    assert run.code == EXIT_INTEGRITY, run.err
    assert "core-0 of staging holds another build" in run.err
    assert not registered(prod[0], installed_model)
    # without the model in the cache, the members must agree: they do not
    Cache.from_config().uninstall(installed_model)
    run = run_axon("promote", str(installed_model), "--from", "staging", "--to", "prod")
    assert run.code == EXIT_INTEGRITY, run.err
    assert "the members of staging disagree" in run.err
    assert "core-0" in run.err and "core-1" in run.err
    assert not registered(prod[0], installed_model)


def test_promote_cli_dry_run_then_atomic(
    peered: Any, installed_model: ModelRef, axon_home: Path
) -> None:
    _staging, prod = staging_and_prod(peered, axon_home, n_prod=2)
    assert publish(installed_model, "staging", opts()).exit_code == EXIT_OK
    run = run_axon(
        "promote", str(installed_model), "--from", "staging", "--to", "prod", "--dry-run"
    )
    assert run.code == EXIT_OK, run.err
    assert "would pull  core-2" in run.out and "would pull  core-3" in run.out
    assert not registered(prod[0], installed_model)
    run = run_axon("promote", str(installed_model), "--from", "staging", "--to", "prod", "--atomic")
    assert run.code == EXIT_OK, run.err + run.out
    for server in prod:
        assert tree_of(server, installed_model) == cached_tree(installed_model)


def test_sync_heals_a_lagging_member(
    peered: Any, installed_model: ModelRef, axon_home: Path
) -> None:
    servers = peered(3)
    relay_config(axon_home, servers, relay=True)
    for name in ("core-0", "core-1"):  # core-2 missed this publish
        assert publish(installed_model, name, opts()).exit_code == EXIT_OK
    result = sync("prod", None, opts())
    assert result.exit_code == EXIT_OK, "\n".join(line.text for line in result.lines())
    [model] = result.models
    assert model.before is not None and not model.before.consistent
    assert model.after is not None and model.after.consistent
    assert model.pulls is not None and model.pulls.publisher_bytes == 0
    assert tree_of(servers[2], installed_model) == cached_tree(installed_model)
    text = "\n".join(line.text for line in result.lines())
    assert "instances DIFFER" in text and "all instances agree" in text
    assert "core-2: pulled from core-" in text
    run = run_axon("sync", "prod", str(installed_model))  # nothing left to do
    assert run.code == EXIT_OK and "nothing to do" in run.out


def test_promote_to_members_that_do_not_accept_staging_fails_and_says_how_to_fix(
    peered: Any, installed_model: ModelRef, axon_home: Path
) -> None:
    staging = peered(2)
    prod = peered(2)  # each other's peers, but not staging's
    relay_config(axon_home, staging, "staging", relay=True)
    add_cluster(axon_home, prod, "prod", first=2, relay=True)
    assert publish(installed_model, "staging", opts()).exit_code == EXIT_OK
    run = run_axon(
        "promote", str(installed_model), "--from", "staging", "--to", "prod", "--dry-run"
    )
    assert run.code == EXIT_PARTIAL and "would FAIL  core-2: accepts none of the sources" in run.out
    run = run_axon("promote", str(installed_model), "--from", "staging", "--to", "prod")
    assert run.code == EXIT_ALL_FAILED
    assert "core-2 cannot pull the model" in run.out and "--accept-from" in run.out
    assert not any(registered(s, installed_model) for s in prod)  # and nothing was pushed


def test_promote_min_success_and_batch_size(
    peered: Any, installed_model: ModelRef, axon_home: Path
) -> None:
    """--batch-size 1: one production member per batch, each pulling from staging or an
    earlier batch; --min-success: a member that cannot pull fails the promotion unless
    enough others succeed."""
    staging = peered(2)
    prod = peered(3, extra_peers=[s.url for s in staging])
    lone = peered(1)  # no peers at all: it cannot pull
    relay_config(axon_home, staging, "staging", relay=True)
    add_cluster(axon_home, prod, "prod", first=2, relay=True)
    add_cluster(axon_home, [*prod[:1], *lone], "mixed", first=10, relay=True)
    assert publish(installed_model, "staging", opts()).exit_code == EXIT_OK

    result = promote(installed_model, "staging", "prod", opts(batch_size=1))
    text = "\n".join(line.text for line in result.lines())
    assert result.exit_code == EXIT_OK, text
    assert result.cluster.batches == [["core-2"], ["core-3"], ["core-4"]]
    assert result.cluster.publisher_bytes == 0
    for server in prod:
        assert tree_of(server, installed_model) == cached_tree(installed_model)

    # "mixed": core-10 (a prod member, accepts staging) and core-11 (cannot pull)
    httpx.delete(f"{prod[0].url}/models/{installed_model}").raise_for_status()
    result = promote(installed_model, "staging", "mixed", opts())
    text = "\n".join(line.text for line in result.lines())
    assert result.exit_code == EXIT_PARTIAL, text
    assert "core-11 cannot pull the model" in text
    result = promote(installed_model, "staging", "mixed", opts(min_success="1"))
    text = "\n".join(line.text for line in result.lines())
    assert result.exit_code == EXIT_OK, text
    assert registered(prod[0], installed_model) and not registered(lone[0], installed_model)
    assert result.cluster.publisher_bytes == 0
