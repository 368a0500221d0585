"""The model registry: which models this instance serves, by id ``ns/name@version``.

Where the registry file lives: :mod:`modelpkg.layout`. Kept in memory, persisted to that
file (atomic write) so models registered by path outside the models dir survive a restart.
At start-up and on ``POST /models/scan`` every complete model under the models dir is
(re-)registered.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelpkg.atomic import atomic_write_text
from modelpkg.manifest import Manifest
from modelpkg.refs import ModelRef

log = logging.getLogger("mlos_core.registry")


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ModelEntry:
    id: str
    name: str
    path: str
    framework: str | None = None
    execution_format: str | None = None
    description: str | None = None
    source: str = "scan"  # scan | register | upload
    status: str = "ready"
    files: int = 0
    size: int = 0
    registered_at: str = field(default_factory=now_iso)
    # who signed it, as checked when it was made visible (None: its namespace needs no
    # signature); see mlos_core.signatures
    signer: dict[str, Any] | None = None
    # files whose bytes another tool rewrote in place (status "damaged"): see
    # mlos_core.storage.damage; a publish of the model replaces them
    damaged: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "framework": self.framework,
            "path": self.path,
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["inference_endpoint"] = inference_endpoint(self.id)
        return data


def inference_endpoint(model_id: str) -> str:
    return f"/models/{model_id}/inference"


def entry_from_manifest(ref: ModelRef, path: Path, manifest: Manifest, source: str) -> ModelEntry:
    files = manifest.files
    return ModelEntry(
        id=ref.id,
        name=ref.name,
        path=str(path),
        framework=manifest.framework,
        execution_format=manifest.execution_format,
        description=manifest.metadata.get("description"),
        source=source,
        files=len(files),
        size=sum(f.size for f in files),
    )


class Registry:
    def __init__(self, state_file: Path, *, durable: bool = True) -> None:
        self.state_file = state_file
        self.durable = durable
        self._models: dict[str, ModelEntry] = {}
        self._lock = threading.Lock()

    def load(self) -> None:
        try:
            raw = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("registry %s unreadable (%s): starting empty", self.state_file, exc)
            return
        for item in raw.get("models", []):
            try:
                entry = ModelEntry(**item)
            except TypeError:
                continue
            if Path(entry.path).is_dir():
                self._models[entry.id] = entry

    def _save(self) -> None:
        data = {"models": [asdict(m) for m in self._models.values()]}
        atomic_write_text(self.state_file, json.dumps(data, indent=1), durable=self.durable)

    def put(self, entry: ModelEntry) -> bool:
        """Register (or replace); True when the id was already registered."""
        with self._lock:
            existed = entry.id in self._models
            self._models[entry.id] = entry
            self._save()
        return existed

    def put_many(self, entries: list[ModelEntry]) -> int:
        """Register what a scan found (refreshing known entries); return how many were new."""
        with self._lock:
            new = 0
            for e in entries:
                old = self._models.get(e.id)
                if old is not None and old.path == e.path:
                    e.source, e.registered_at = old.source, old.registered_at
                new += old is None
                self._models[e.id] = e
            self._save()
        return new

    def get(self, model_id: str) -> ModelEntry | None:
        return self._models.get(model_id)

    def remove(self, model_id: str) -> ModelEntry | None:
        with self._lock:
            entry = self._models.pop(model_id, None)
            if entry is not None:
                self._save()
        return entry

    def all(self) -> list[ModelEntry]:
        return sorted(self._models.values(), key=lambda m: m.id)

    def __len__(self) -> int:
        return len(self._models)
