"""What ``axon publish`` to network storage says when a reader was not told, and which token
it sends to whom, through the real CLI against real mlos-core processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelpkg.refs import ModelRef
from tests.fixtures.mlos import ServerFactory
from tests.helpers import error_lines, run_axon, write_config

pytestmark = pytest.mark.slow

HF_TENANT = {"tenants": {"hf": {"tokens": ["hf-token"], "namespaces": ["hf"]}}}


def _error_and_hint(err: str) -> tuple[str, str]:
    """The error line of the notification, and its hint: the text after the error's
    message (the server's own words come before it)."""
    line = next(x for x in error_lines(err) if "not notified" in x)
    return line, line[line.rindex(" (once") if " (once" in line else line.rindex("answered") :]


def test_a_reader_that_does_not_read_the_directory_is_told_how_to(
    installed_model: ModelRef, tmp_path: Path, mlos_server: ServerFactory
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    reader = mlos_server()  # its own models dir, no --register-root
    ref = str(installed_model)
    r = run_axon("publish", ref, "-t", str(shared), "--notify-instance", reader.url)
    assert r.code == 8, r.out + r.err
    message, hint = _error_and_hint(r.err)
    model_dir = f"{shared}/{installed_model.relpath}"
    assert f"this instance does not read {model_dir}" in hint
    assert f"--register-root {shared} " in hint
    assert "once the instance is up" not in r.err  # it is up: it answered
    assert f"then run: axon publish {ref} --target {shared} --notify-instance {reader.url} " in hint
    # the server's own advice survives the cut of its message
    assert "copy the model there first" in message

    fixed = mlos_server(register_root=shared)
    ok = run_axon("publish", ref, "-t", str(shared), "--notify-instance", fixed.url)
    assert ok.code == 0, ok.out + ok.err


def test_a_reader_that_wants_a_token_says_how_to_send_one(
    installed_model: ModelRef, tmp_path: Path, mlos_server: ServerFactory, axon_home: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    reader = mlos_server(tokens=HF_TENANT, register_root=shared)
    ref = str(installed_model)
    bare = run_axon("publish", ref, "-t", str(shared), "--notify-instance", reader.url)
    assert bare.code == 8, bare.out + bare.err
    message, hint = _error_and_hint(bare.err)
    assert "none was sent" in message
    assert "--token-env" in hint and "AXON_TOKEN" in hint
    assert "once the instance is up" not in bare.err

    # AXON_TOKEN is for addresses typed on the command line: a --notify-instance URL gets it
    typed = run_axon(
        "publish", ref, "-t", str(shared), "--notify-instance", reader.url,
        env={"AXON_TOKEN": "hf-token"},
    )  # fmt: skip
    assert typed.code == 0, typed.out + typed.err

    # ... a configured notify_instances entry does not (it has token_env for that)
    write_config(
        axon_home,
        {"team-share": {"type": "network_storage", "storage_path": str(shared),
                        "notify_instances": [reader.url]}},
    )  # fmt: skip
    configured = run_axon("publish", ref, "-t", "team-share", env={"AXON_TOKEN": "hf-token"})
    assert configured.code == 8, configured.out + configured.err
    assert "none was sent" in error_lines(configured.err)[0]
    # --token-env names the variable for every instance the command talks to
    named = run_axon(
        "publish", ref, "-t", "team-share", "--token-env", "HF_TOKEN",
        env={"HF_TOKEN": "hf-token"},
    )  # fmt: skip
    assert named.code == 0, named.out + named.err


def test_a_reader_that_is_down_is_told_once_it_is_up(
    installed_model: ModelRef, tmp_path: Path, mlos_server: ServerFactory
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    reader = mlos_server()
    reader.stop()
    ref = str(installed_model)
    r = run_axon("publish", ref, "-t", str(shared), "--notify-instance", reader.url)
    assert r.code == 8, r.out + r.err
    _, hint = _error_and_hint(r.err)
    assert "once the instance is up" in hint


def test_a_long_server_message_is_cut_at_a_sentence_and_stays_capped() -> None:
    from axon.mlos_client import ERROR_SHOWN, shown_message

    advice = "start it with --register-root DIR"
    said = "x" * 350 + ". " + advice + ". " + "y" * 400
    cut = shown_message(said)
    assert advice in cut and cut.endswith(". ...") and len(cut) <= ERROR_SHOWN
    hostile = "\x1b[2J" + "z" * 100_000  # no sentence end: cut at the cap, escapes replaced
    capped = shown_message(hostile)
    assert len(capped) == ERROR_SHOWN and "\x1b" not in capped
