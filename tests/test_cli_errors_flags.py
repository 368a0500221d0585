"""Every error in one shape on stderr (stdout stays the result), and Go-style boolean flags
(``--validate=false``), through the real ``axon`` subprocess with stdout and stderr captured
apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelpkg.refs import ModelRef
from tests.helpers import error_lines, run_axon


def _only_errors(err: str) -> None:
    """Every non-blank stderr line that is not progress or a usage line is an error line."""
    for line in err.splitlines():
        if line.strip() and not line.startswith(("axon: progress:", "Usage:")):
            assert line.startswith("axon: error: "), err


def test_storage_publish_errors_go_to_stderr_only(
    installed_model: ModelRef, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-share"
    for extra in ([], ["--dry-run"], ["--quiet"]):
        r = run_axon("publish", str(installed_model), "-t", str(missing), *extra)
        assert r.code == 7, (extra, r.out, r.err)
        assert r.out == "", (extra, r.out)  # nothing of the failure on stdout
        errors = error_lines(r.err)
        assert len(errors) == 1, r.err
        assert str(missing) in errors[0] and "does not exist" in errors[0]
        _only_errors(r.err)


def test_json_errors_keep_the_object_and_add_the_line(
    installed_model: ModelRef, tmp_path: Path
) -> None:
    r = run_axon("publish", str(installed_model), "-t", str(tmp_path / "nope"), "--json")
    assert r.code == 7
    assert r.json()["results"][0]["error"]["type"] == "TargetUnreachableError"
    assert len(error_lines(r.err)) == 1
    early = run_axon("publish", "hf/not-installed@v9", "-t", str(tmp_path), "--json")
    assert early.code == 3 and early.json()["ok"] is False
    assert len(error_lines(early.err)) == 1


def test_usage_errors_have_the_same_shape() -> None:
    r = run_axon("publish", "--no-such-flag", "x/y@1")
    assert r.code == 2 and r.out == ""
    assert error_lines(r.err) and "--no-such-flag" in error_lines(r.err)[0]
    assert "axon publish --help" in r.err
    unknown = run_axon("frobnicate")
    assert unknown.code == 2 and unknown.out == ""
    assert "frobnicate" in error_lines(unknown.err)[0]


@pytest.mark.parametrize(
    ("flag", "published"),
    [("--validate=false", True), ("--validate=true", True), ("--validate=0", True),
     ("--dry-run=true", False), ("--dry-run=False", True), ("--notify=false", True)],
)  # fmt: skip
def test_go_style_boolean_flags(
    installed_model: ModelRef, tmp_path: Path, flag: str, published: bool
) -> None:
    share = tmp_path / "share"
    share.mkdir()
    r = run_axon("publish", str(installed_model), "-t", str(share), flag)
    assert r.code == 0, r.err
    assert (share / installed_model.relpath / "manifest.yaml").exists() is published
    if "dry-run=true" in flag:
        assert r.out.startswith("dry run:")


def test_go_style_boolean_flags_really_switch(installed_model: ModelRef, tmp_path: Path) -> None:
    """--validate=false skips the check (a corrupt cached file goes out unchecked) and
    --validate=true keeps it (refused, exit 5)."""
    from axon.cache import Cache

    model = Cache.from_config().get(installed_model)
    victim = next(p for p in model.path.rglob("*.safetensors"))
    victim.write_bytes(b"\0" * victim.stat().st_size)  # same size, other bytes
    share = tmp_path / "share"
    share.mkdir()
    on = run_axon("publish", str(installed_model), "-t", str(share), "--validate=true")
    assert on.code == 5, on.err
    off = run_axon("publish", str(installed_model), "-t", str(share / "x"), "--validate=no")
    assert "does not match" not in off.err  # no check ran (the copy itself may still refuse)


def test_bad_boolean_value_is_a_usage_error(installed_model: ModelRef, tmp_path: Path) -> None:
    r = run_axon("publish", str(installed_model), "-t", str(tmp_path), "--validate=maybe")
    assert r.code == 2 and r.out == ""
    (line,) = error_lines(r.err)
    assert "--validate='maybe'" in line and "true or false" in line
    assert "Usage: axon publish" in r.err


def test_publish_help_says_what_is_on() -> None:
    r = run_axon("publish", "--help")
    assert r.code == 0
    text = " ".join(r.out.split())
    assert "--validate[=BOOL] / --no-validate" in text
    assert "[default: on]" in text.split("--validate[=BOOL]")[1].split("--notify[")[0]
    assert "[default: on]" in text.split("--notify[=BOOL]")[1].split("--notify-instance")[0]
    assert "[default: off]" in text.split("--dry-run[=BOOL]")[1]


def test_rewrite_keeps_everything_after_double_dash() -> None:
    import click

    from axon.cli.flags import rewrite_bool_flags

    @click.command()
    @click.option("--validate/--no-validate", default=True)
    @click.option("--dry-run", is_flag=True)
    @click.argument("rest", nargs=-1)
    def cmd(validate: bool, dry_run: bool, rest: tuple[str, ...]) -> None: ...

    assert rewrite_bool_flags(cmd, ["--validate=off", "--dry-run=1", "--", "--validate=x"]) == [
        "--no-validate",
        "--dry-run",
        "--",
        "--validate=x",
    ]
    assert rewrite_bool_flags(cmd, ["--no-validate=false", "--dry-run=no"]) == ["--validate"]
