"""``--max-batch``: inference requests queued for one model run together, and each still gets
exactly its own outputs (real ``mlos-core serve`` processes, real ONNX graphs)."""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any

import httpx
import numpy as np
import pytest

from tests.fixtures.onnx_models import minilm_path, mlp_onnx, onnx_or_skip, upload

pytestmark = pytest.mark.slow


def requests_at_once(url: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def one(body: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(url, json=body, timeout=120)
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer

    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def test_queued_requests_run_together_and_get_their_own_rows(mlos_server: Any) -> None:
    onnx_or_skip()
    import onnxruntime as ort

    rng = np.random.default_rng(3)
    model = mlp_onnx(rng.normal(size=(256, 4096)) / 16, rng.normal(size=(4096, 3)) / 64)
    srv = mlos_server(inference_threads=1, max_batch=8)
    assert upload(srv.url, "fl/mlp@v1", {"model.onnx": model}).status_code == 201
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])

    n = 4 * max(1, os.cpu_count() or 1) + 8  # more than the run slots: requests queue
    inputs = [rng.normal(size=(1 + i % 3, 256)).astype(np.float32) for i in range(n)]
    answers = requests_at_once(
        f"{srv.url}/models/fl/mlp@v1/inference?include_outputs=true",
        [{"x": x.tolist()} for x in inputs],
    )
    for x, answer in zip(inputs, answers, strict=True):
        (want,) = session.run(None, {"x": x})
        got = np.asarray(answer["outputs"]["logits"], np.float32)
        assert got.shape == want.shape == (x.shape[0], 3)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    sizes = [a["batch_size"] for a in answers]
    assert max(sizes) > 1, sizes
    assert max(sizes) <= 8


def test_only_requests_of_one_shape_run_together(mlos_server: Any) -> None:
    import onnxruntime as ort

    path = minilm_path()
    srv = mlos_server(inference_threads=1, max_batch=4)
    assert upload(srv.url, "nlp/minilm@v1", {"model.onnx": path.read_bytes()}).status_code == 201
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    bodies = []
    for i in range(16):
        length = 5 if i % 2 else 9  # two sequence lengths: never in one run
        ids = [101, *range(2000 + i, 2000 + i + length - 2), 102]
        bodies.append(
            {"input_ids": [ids], "attention_mask": [[1] * length], "token_type_ids": [[0] * length]}
        )
    answers = requests_at_once(
        f"{srv.url}/models/nlp/minilm@v1/inference?include_outputs=true", bodies
    )
    for body, answer in zip(bodies, answers, strict=True):
        feeds = {k: np.asarray(v, np.int64) for k, v in body.items()}
        (want,) = session.run(None, feeds)
        got = np.asarray(answer["outputs"]["last_hidden_state"], np.float32)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
