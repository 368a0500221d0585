"""A cluster's desired state in its discovery store: which build of each model it should hold.

``axon`` writes one record per model after a publish (or promotion, or sync) to a discovered
cluster succeeded; every ``mlos-core`` of that cluster reads them and pulls from its peers
what it lacks (docs/relay.md). In etcd the records sit next to the member records
(:mod:`mlos_core.integrations.discovery` puts those at ``<root>/clusters/<c>/instances/<id>``)::

    <root>/clusters/<cluster>/desired/<model id, percent-encoded>   (no lease)
        {"model_id": "hf/bert@v1", "manifest_sha256": "<64 hex>",
         "published_at": "2026-11-30T16:40:00Z"}

``root`` is the etcd URI's path (``etcd://h:2379/mlos`` -> ``/mlos``, the default). The model
id is encoded with ``urllib.parse.quote(model_id, safe="")`` (``hf%2Fbert%40v1``), so a key
holds exactly one path segment below ``desired/``. ``manifest_sha256`` is the digest an upload
commit answers (``modelpkg.manifest.Manifest.digest``). A record read back is input like any
other: :func:`parse_record` checks every field and says which key was wrong.

Standard library only, like the rest of :mod:`modelpkg`'s contract.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from modelpkg.errors import PackageError
from modelpkg.refs import ModelRef

DEFAULT_ROOT = "/mlos"
MAX_RECORD = 4096  # bytes of one record's value; anything longer is not ours
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z")
_CLUSTER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class DesiredStateError(PackageError):
    """A desired-state record that is not one (names its key)."""


def check_cluster(cluster: str) -> str:
    """``cluster`` if it is a name a key may hold (letters, digits, ``.``, ``_``, ``-``)."""
    if not isinstance(cluster, str) or not _CLUSTER.fullmatch(cluster):
        raise DesiredStateError(
            f"cluster name {str(cluster)[:80]!r} cannot be used in a discovery key: use "
            "letters, digits, '.', '_' or '-' (at most 128)"
        )
    return cluster


def desired_prefix(cluster: str, root: str = DEFAULT_ROOT) -> str:
    """The key prefix every record of ``cluster`` starts with (ends with ``/``)."""
    root = "/" + root.strip("/") if root.strip("/") else ""
    return f"{root}/clusters/{check_cluster(cluster)}/desired/"


def desired_key(cluster: str, model_id: str, root: str = DEFAULT_ROOT) -> str:
    """The key of ``model_id``'s record in ``cluster``."""
    return desired_prefix(cluster, root) + quote(model_id, safe="")


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class DesiredModel:
    """One record: ``model_id`` should be held as the build whose manifest digest is
    ``manifest_sha256``, as published at ``published_at`` (UTC, ``YYYY-MM-DDTHH:MM:SSZ``)."""

    model_id: str
    manifest_sha256: str
    published_at: str

    @classmethod
    def now(cls, model_id: str, manifest_sha256: str) -> DesiredModel:
        return cls(model_id, manifest_sha256, now_iso()).checked("the new record")

    def checked(self, where: str) -> DesiredModel:
        try:
            ModelRef.parse(self.model_id)
        except PackageError as exc:
            raise DesiredStateError(f"{where}: model_id: {exc}") from exc
        if not _SHA256.fullmatch(self.manifest_sha256):
            raise DesiredStateError(
                f"{where}: manifest_sha256 must be 64 lowercase hex digits, got "
                f"{self.manifest_sha256[:80]!r}"
            )
        if not _TIME.fullmatch(self.published_at):
            raise DesiredStateError(
                f"{where}: published_at must be UTC 'YYYY-MM-DDTHH:MM:SSZ', got "
                f"{self.published_at[:80]!r}"
            )
        return self

    def to_json(self) -> str:
        return json.dumps(
            {
                "model_id": self.model_id,
                "manifest_sha256": self.manifest_sha256,
                "published_at": self.published_at,
            },
            sort_keys=True,
        )

    def published(self) -> datetime:
        return datetime.strptime(self.published_at[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)


def parse_record(key: str, value: str | bytes, prefix: str | None = None) -> DesiredModel:
    """The record stored at ``key``; :class:`DesiredStateError` naming ``key`` for anything
    else (a value too long, not JSON, a field missing or wrong, or a model id other than the
    one the key names when ``prefix`` is given)."""
    where = f"desired-state key {key[:200]!r}"
    if len(value) > MAX_RECORD:
        raise DesiredStateError(f"{where}: value of {len(value)} bytes (at most {MAX_RECORD})")
    try:
        data = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DesiredStateError(f"{where}: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DesiredStateError(f"{where}: expected a JSON object")
    fields = {}
    for name in ("model_id", "manifest_sha256", "published_at"):
        if not isinstance(data.get(name), str):
            raise DesiredStateError(f"{where}: {name} is missing or not a string")
        fields[name] = data[name]
    record = DesiredModel(**fields).checked(where)
    if prefix is not None and unquote(key.removeprefix(prefix)) != record.model_id:
        raise DesiredStateError(f"{where}: holds model {record.model_id!r}, not the key's")
    return record
