"""The OpenAPI 3.1 document served at ``GET /openapi.json`` (written by hand: Starlette has
no generator for request bodies). Keep it in sync with routes.py, routes_v1.py and
docs/upload-protocol.md."""

from __future__ import annotations

from typing import Any

_ERR = {"$ref": "#/components/responses/Error"}
_ID = {
    "name": "model_id",
    "in": "path",
    "required": True,
    "description": "ns/name@version, percent-encoded (hf%2Fbert%40latest) or raw",
    "schema": {"type": "string"},
}
_UPLOAD_ID = {"name": "upload_id", "in": "path", "required": True, "schema": {"type": "string"}}
_SHA = {
    "name": "sha256",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
}


def _ok(desc: str, schema: str = "Status", code: str = "200") -> dict[str, Any]:
    return {
        code: {
            "description": desc,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        },
        "4XX": _ERR,
        "5XX": _ERR,
    }


def _json_body(schema: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"required": True, "content": {"application/json": {"schema": ref}}}


def _paths() -> dict[str, Any]:
    return {
        "/health": {"get": {"summary": "Readiness probe", "responses": _ok("healthy")}},
        "/stats": {"get": {"summary": "Instance statistics", "responses": _ok("stats")}},
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "text", "content": {"text/plain": {"schema": {}}}}
                },
            }
        },
        "/models": {"get": {"summary": "List models", "responses": _ok("models", "ModelList")}},
        "/models/register": {
            "post": {
                "summary": "Register a model directory already on this instance",
                "description": "path: the model's own <models-dir>/<ns>/<name>/<version>, or a "
                "directory under a --register-root ending in <ns>/<name>/<version>, reached "
                "without symbolic links; 404 path_not_found alike for missing and not allowed",
                "requestBody": _json_body("RegisterRequest"),
                "responses": _ok("registered", "Registered"),
            }
        },
        "/models/scan": {
            "post": {
                "summary": "Register every complete model",
                "description": 'with tokens: a tenant allowed every namespace ("*")',
                "responses": _ok("scanned"),
            }
        },
        "/models/upload": {
            "post": {
                "summary": "One-shot multipart upload (model_id, manifest, model_files...)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["model_id", "manifest"],
                                "properties": {
                                    "model_id": {"type": "string"},
                                    "manifest": {"type": "string"},
                                    "model_files": {
                                        "type": "array",
                                        "items": {"type": "string", "format": "binary"},
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": _ok("uploaded", "Registered", "201"),
            }
        },
        "/models/{model_id}": {
            "get": {"parameters": [_ID], "responses": _ok("the model", "Status")},
            "delete": {"parameters": [_ID], "responses": _ok("deleted")},
        },
        "/models/{model_id}/inference": {
            "post": {
                "summary": "Inference: named tensors in, outputs out (ONNX; docs/inference.md)",
                "parameters": [
                    _ID,
                    {"name": "include_outputs", "in": "query", "schema": {"type": "boolean"}},
                ],
                "requestBody": {
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": _ok("answer"),
            }
        },
        "/v1/uploads": {
            "post": {
                "summary": "Open a resumable upload",
                "requestBody": _json_body("OpenUpload"),
                "responses": _ok("opened", "Upload", "201"),
            }
        },
        "/v1/uploads/{upload_id}": {
            "get": {"parameters": [_UPLOAD_ID], "responses": _ok("state", "Upload")},
            "delete": {"parameters": [_UPLOAD_ID], "responses": _ok("aborted")},
        },
        "/v1/uploads/{upload_id}/blobs/{sha256}": {
            "put": {
                "summary": "Send (the rest of) one file's content",
                "parameters": [
                    _UPLOAD_ID,
                    _SHA,
                    {
                        "name": "Upload-Offset",
                        "in": "header",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                    },
                ],
                "requestBody": {
                    "content": {"application/octet-stream": {"schema": {"format": "binary"}}}
                },
                "responses": {**_ok("complete", "Blob", "201"), "200": {"description": "partial"}},
            },
            "head": {
                "parameters": [_UPLOAD_ID, _SHA],
                "responses": {"200": {"description": "Upload-Offset header"}, "4XX": _ERR},
            },
        },
        "/v1/uploads/{upload_id}/prepare": {
            "post": {"parameters": [_UPLOAD_ID], "responses": _ok("prepared")}
        },
        "/v1/uploads/{upload_id}/commit": {
            "post": {"parameters": [_UPLOAD_ID], "responses": _ok("committed", "Registered")}
        },
        "/v1/models/{model_id}": {
            "get": {
                "summary": "The registration record, with who signed it (docs/signing.md)",
                "parameters": [_ID],
                "responses": _ok("registered"),
            }
        },
        "/v1/signing": {
            "get": {
                "summary": "Whether models must be signed; the keys trusted for a namespace",
                "parameters": [{"name": "namespace", "in": "query", "schema": {"type": "string"}}],
                "responses": _ok("the signing policy"),
            }
        },
        "/v1/models/{model_id}/manifest": {
            "get": {
                "summary": "manifest.yaml of the visible version",
                "parameters": [_ID],
                "responses": {
                    "200": {
                        "description": "YAML",
                        "content": {"application/yaml": {"schema": {"type": "string"}}},
                    },
                    "4XX": _ERR,
                },
            }
        },
        "/v1/models/{model_id}/load": {
            "post": {
                "summary": "Load the model's session now; its inputs and outputs",
                "parameters": [_ID],
                "responses": _ok("loaded"),
            }
        },
        "/v1/models/{model_id}/evaluate": {
            "post": {
                "summary": "Aggregates of the model over a dataset the instance holds",
                "parameters": [_ID],
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "dataset": {"type": "string"},
                                    "metrics": {"type": "array", "items": {"type": "string"}},
                                },
                            }
                        }
                    },
                },
                "responses": _ok("examples, metrics, seconds"),
            }
        },
        "/v1/models/{model_id}/rollback": {
            "post": {"parameters": [_ID], "responses": _ok("rolled back", "Registered")}
        },
        "/v1/cluster/members": {
            "get": {
                "summary": "The members of this instance's cluster, from its discovery source",
                "description": "each with its advertised endpoint, the source's status and a "
                "/health probe (?probe=false skips it); 404 not_clustered without --cluster, "
                "503 discovery_unavailable, 501 members_unlisted (docs/discovery.md)",
                "parameters": [
                    {"name": "probe", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": _ok("members"),
            }
        },
    }


def _schemas() -> dict[str, Any]:
    s = {"type": "string"}
    return {
        "Status": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": s, "message": s},
        },
        "Error": {
            "type": "object",
            "required": ["status", "code", "message"],
            "properties": {"status": {"const": "error"}, "code": s, "message": s},
        },
        "ModelList": {
            "type": "object",
            "properties": {
                "status": s,
                "total": {"type": "integer"},
                "models": {"type": "array", "items": {"type": "object"}},
            },
        },
        "RegisterRequest": {
            "type": "object",
            "required": ["model_id"],
            "properties": {
                k: s
                for k in (
                    "model_id",
                    "name",
                    "framework",
                    "execution_format",
                    "path",
                    "model_path",
                    "description",
                    "manifest_path",
                )
            },
        },
        "Registered": {
            "type": "object",
            "properties": {"status": s, "model_id": s, "path": s, "inference_endpoint": s},
        },
        "OpenUpload": {
            "type": "object",
            "required": ["model_id", "manifest"],
            "properties": {"model_id": s, "manifest": {"type": ["string", "object"]}},
        },
        "Upload": {
            "type": "object",
            "properties": {
                "status": s,
                "upload_id": s,
                "model_id": s,
                "unchanged": {"type": "boolean"},
                "needed": {"type": "array", "items": {"type": "object"}},
                "have": {"type": "array", "items": s},
                "expires_at": s,
            },
        },
        "Blob": {
            "type": "object",
            "properties": {
                "status": s,
                "sha256": s,
                "offset": {"type": "integer"},
                "complete": {"type": "boolean"},
            },
        },
    }


def openapi_document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "mlos-core", "version": version},
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "responses": {
                "Error": {
                    "description": "error",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            },
        },
    }
