"""``axon sign``, and the signature parts of ``axon verify --signature`` and ``axon info``.

The work is :mod:`axon.signing`'s; this module parses options and renders.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from axon.cli.output import Output, json_option

if TYPE_CHECKING:
    from axon.cache import Cache, CachedModel, VerifyReport

F = TypeVar("F", bound=Callable[..., Any])

_KEY_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("sign")
@click.argument("ref")
@click.option(
    "--key",
    type=_KEY_FILE,
    help="EC private key (PEM, P-256/P-384/P-521); a password is read from AXON_SIGNING_PASSWORD.",
)
@click.option(
    "--cert",
    "certificate",
    type=_KEY_FILE,
    help="Sign as this certificate (PEM, issued for --key): the signature carries it.",
)
@click.option(
    "--cert-chain",
    "chain",
    multiple=True,
    type=_KEY_FILE,
    help="Intermediate CA certificates of --cert (PEM); repeatable.",
)
@click.option(
    "--keyless",
    is_flag=True,
    help="Keyless Sigstore signing (OIDC identity; needs the network and the model-signing "
    "package).",
)
@click.option("--staging", is_flag=True, help="With --keyless: Sigstore's staging services.")
@json_option
def sign_cmd(
    ref: str,
    key: Path | None,
    certificate: Path | None,
    chain: tuple[Path, ...],
    keyless: bool,
    staging: bool,
    as_json: bool,
) -> None:
    """Sign a cached model: write model.sig (OpenSSF model signing format) over the sha256
    of every file, and list it in the manifest so every publish carries it.

    Verify it with `axon verify REF --signature --trusted-key KEY.pub`, or with the
    model_signing CLI: `model_signing verify key DIR --signature DIR/model.sig
    --public_key KEY.pub`.
    """
    from axon.cache import Cache
    from axon.errors import OptionError
    from axon.signing import sign_model, sign_model_keyless

    if keyless == (key is not None):
        raise OptionError("give either --key KEY.pem or --keyless", hint="axon sign --help")
    if (certificate or chain) and key is None:
        raise OptionError("--cert and --cert-chain need --key (the certificate's private key)")
    out = Output(as_json=as_json)
    cache = Cache.from_config()
    if keyless:
        result = sign_model_keyless(cache, ref, staging=staging)
    else:
        assert key is not None
        result = sign_model(cache, ref, key=key, certificate=certificate, chain=chain)
    if as_json:
        out.json(result.to_dict())
        return
    out.line(f"signed {result.ref}: {result.files} files, by {result.signer.describe()}")
    out.line(f"  {result.path}")


def signature_options(func: F) -> F:
    """``--signature`` and ``--trusted-key`` for ``axon verify``."""
    func = click.option(
        "--trusted-key",
        "trusted_keys",
        multiple=True,
        type=click.Path(exists=True, path_type=Path),
        help="With --signature: a public key or CA certificate (PEM) to trust, or a "
        "directory of them; repeatable.",
    )(func)
    return click.option(
        "--signature",
        is_flag=True,
        help="Also check model.sig: it covers exactly these files and verifies.",
    )(func)


def report_signature(
    out: Output, cache: Cache, report: VerifyReport, trusted: tuple[Path, ...]
) -> None:
    """After ``axon verify`` found the files intact: check the signature, render both."""
    from axon.signing import verify_model

    signer = verify_model(cache, report.ref, trusted)
    if out.as_json:
        out.json({**report.to_dict(), "signature": {"ok": True, "signer": signer.to_dict()}})
        return
    out.line(f"ok: {report.ref}: {report.files_checked} files match the manifest and its signature")
    trust = "" if signer.trusted_as else " (not checked against a trusted key)"
    out.line(f"  signed by {signer.describe()}{trust}")


def signature_field(model: CachedModel) -> str:
    """The ``signed`` line of ``axon info``."""
    info = signature_json(model)
    if info is None:
        return "no (axon sign REF --key KEY.pem)"
    if not info["valid"]:
        return f"INVALID: {info['problem']}"
    return f"by {info['signer']['description']} (axon verify --signature checks trust)"


def signature_json(model: CachedModel) -> dict[str, Any] | None:
    from axon.signing import describe_signature

    return describe_signature(model.path, model.manifest)
