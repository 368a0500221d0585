"""``POST /v1/models/{id}/evaluate`` on real ``mlos-core serve`` processes: datasets held by
the instance (``--datasets-dir``), aggregates only, checked inputs, tenants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.fixtures.mlos import ALPHA, BRAVO, TOKENS
from tests.fixtures.models import safetensors_bytes
from tests.fixtures.onnx_models import linear_onnx, onnx_or_skip, upload, write_dataset

pytestmark = pytest.mark.slow

IDENTITY = np.eye(4, 3)  # logits = the first 3 features: the class is the largest of them


def classified(n: int, correct: int, *, seed: int = 0) -> dict[str, np.ndarray[Any, Any]]:
    """``n`` examples for the identity classifier, ``correct`` of them labelled right."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    predicted = np.argmax(x[:, :3], axis=1)
    labels = predicted.copy()
    labels[correct:] = (predicted[correct:] + 1) % 3
    return {"x": x, "labels": labels.astype(np.int64)}


def by_hand(data: dict[str, np.ndarray[Any, Any]]) -> tuple[float, float]:
    """Accuracy and softmax cross-entropy of the identity classifier, in float64."""
    logits = data["x"][:, :3].astype(np.float64)
    y = data["labels"]
    acc = float(np.mean(np.argmax(logits, axis=1) == y))
    lse = np.log(np.exp(logits).sum(axis=1))
    loss = float(np.mean(lse - logits[np.arange(len(y)), y]))
    return acc, loss


def evaluate(url: str, model_id: str, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/{model_id}/evaluate", json=body, timeout=120, **kw)


@pytest.fixture
def datasets(tmp_path: Path) -> Path:
    onnx_or_skip()
    root = tmp_path / "datasets"
    root.mkdir()
    return root


def test_metrics_equal_those_computed_by_hand_over_files_and_batches(
    mlos_server: Any, datasets: Path
) -> None:
    # 2,500 + 700 examples: more than one batch (1,024 at most), two files
    a, b = classified(2500, 2000, seed=1), classified(700, 100, seed=2)
    write_dataset(datasets, "fl/digits", a, file="a.npz")
    np.savez_compressed(datasets / "fl/digits/b.npz", **b)  # compressed files stream too
    srv = mlos_server(datasets_dir=datasets, inference_threads=1)
    assert upload(srv.url, "fl/m@v1", {"model.onnx": linear_onnx(IDENTITY, np.zeros(3))}).is_success

    r = evaluate(srv.url, "fl/m@v1", {"dataset": "fl/digits"})
    assert r.status_code == 200, r.text
    answer = r.json()
    both = {k: np.concatenate([a[k], b[k]]) for k in a}
    acc, loss = by_hand(both)
    assert answer["examples"] == 3200
    assert answer["metrics"]["accuracy"] == pytest.approx(2100 / 3200, abs=1e-12)
    assert answer["metrics"]["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert answer["metrics"]["loss"] == pytest.approx(loss, rel=1e-5)
    assert set(answer) == {
        "status",
        "model_id",
        "dataset",
        "examples",
        "metrics",
        "seconds",
        "manifest_sha256",
    }  # fmt: skip  - aggregates only: no inputs, outputs or labels leave the instance
    assert "3200 examples in 2 file(s), 1024 at a time" in srv.log()

    # the dataset defaults to the model's own ns/name; mse/mae against float targets
    reg = {"x": a["x"][:50], "labels": a["x"][:50, :3] + 0.5}
    write_dataset(datasets, "fl/m", reg)
    r = evaluate(srv.url, "fl/m@v1", {"metrics": ["mse", "mae"]})
    assert r.status_code == 200, r.text
    assert r.json()["dataset"] == "fl/m"
    assert r.json()["metrics"] == pytest.approx({"mse": 0.25, "mae": 0.5})
    r = evaluate(srv.url, "fl/m@v1", {})  # float labels: mse and mae are chosen
    assert set(r.json()["metrics"]) == {"mse", "mae"}


def test_batches_are_bounded_by_their_outputs_too(mlos_server: Any, datasets: Path) -> None:
    classes = 100_000  # 400 KB of logits per example: 83 examples make 32 MiB
    w = np.zeros((4, classes))
    w[0, 7] = 1.0
    x = np.zeros((200, 4), np.float32)
    x[:150, 0] = 1.0  # class 7 for 150 of them; all-zero logits: argmax 0 for the others
    write_dataset(datasets, "fl/wide", {"x": x, "labels": np.full(200, 7)})
    srv = mlos_server(datasets_dir=datasets, inference_threads=1)
    assert upload(
        srv.url, "fl/wide@v1", {"model.onnx": linear_onnx(w, np.zeros(classes))}
    ).is_success
    r = evaluate(srv.url, "fl/wide@v1", {"dataset": "fl/wide", "metrics": ["accuracy"]})
    assert r.status_code == 200, r.text
    assert r.json()["metrics"]["accuracy"] == 0.75
    assert "200 examples in 1 file(s), 83 at a time" in srv.log()


def test_one_logit_accuracy_is_its_sign(mlos_server: Any, datasets: Path) -> None:
    w = np.array([[1.0], [0.0], [0.0], [0.0]])
    x = np.array([[2, 0, 0, 0], [-1, 0, 0, 0], [3, 0, 0, 0], [-2, 0, 0, 0]] * 5, np.float32)
    labels = np.array([1, 0, 0, 0] * 5)  # 3 of 4 right
    write_dataset(datasets, "fl/bin", {"x": x, "labels": labels})
    srv = mlos_server(datasets_dir=datasets, inference_threads=1)
    assert upload(srv.url, "fl/bin@v1", {"model.onnx": linear_onnx(w, [0.0])}).is_success
    r = evaluate(srv.url, "fl/bin@v1", {"dataset": "fl/bin", "metrics": ["accuracy", "loss"]})
    assert r.status_code == 200, r.text
    z = x[:, 0].astype(np.float64)
    want_loss = float(np.mean(np.logaddexp(0, z) - labels * z))
    assert r.json()["metrics"] == pytest.approx({"accuracy": 0.75, "loss": want_loss})


def test_a_dataset_that_does_not_match_the_model_is_a_400_naming_the_array(
    mlos_server: Any, datasets: Path
) -> None:
    good = classified(20, 20)
    write_dataset(
        datasets, "fl/wide", {"x": np.zeros((20, 5), np.float32), "labels": good["labels"]}
    )
    write_dataset(datasets, "fl/noinput", {"features": good["x"], "labels": good["labels"]})
    write_dataset(datasets, "fl/nolabels", {"x": good["x"]})
    write_dataset(datasets, "fl/short", {"x": good["x"][:10], "labels": good["labels"]})
    write_dataset(datasets, "fl/ints", {"x": good["x"], "labels": good["labels"]})
    write_dataset(datasets, "fl/ints", good, file="b.npz")
    np.savez(
        datasets / "fl/ints/c.npz",
        x=np.arange(20)[:, None] * np.ones((1, 5)),
        labels=good["labels"],
    )
    (datasets / "fl/broken").mkdir()
    (datasets / "fl/broken/a.npz").write_bytes(b"not a zip")
    srv = mlos_server(datasets_dir=datasets, inference_threads=1)
    assert upload(srv.url, "fl/m@v1", {"model.onnx": linear_onnx(IDENTITY, np.zeros(3))}).is_success

    def refused(dataset: str, status: int, *words: str) -> None:
        r = evaluate(srv.url, "fl/m@v1", {"dataset": dataset})
        assert r.status_code == status, r.text
        message = r.json()["message"]
        for w in words:
            assert w in message, message
        assert str(datasets) not in message  # never the server's own paths

    refused("fl/wide", 400, "fl/wide/part-0.npz", "array 'x'", "[20, 5]", "float32 [batch, 4]")
    refused("fl/noinput", 400, "fl/noinput/part-0.npz", "no array 'x'", "features")
    refused("fl/nolabels", 400, "fl/nolabels/part-0.npz", "no array 'labels'")
    refused("fl/short", 400, "array 'x' has 10 examples", "'labels' has 20")
    refused("fl/ints", 400, "fl/ints/c.npz", "array 'x'", "[20, 5]")  # checked before any runs
    refused("fl/broken", 400, "fl/broken/a.npz", "not a readable .npz")
    refused("fl/nothere", 404, "'fl/nothere'", "--datasets-dir")
    refused("../etc", 400, "not a dataset name")
    refused("a/b/c", 400, "not a dataset name")
    r = evaluate(srv.url, "fl/m@v1", {"dataset": "fl/wide", "metrics": ["f1"]})
    assert r.status_code == 400 and "unknown metric 'f1'" in r.json()["message"]
    r = evaluate(srv.url, "fl/m@v1", {"dataset": "fl/wide", "shuffle": True})
    assert r.status_code == 400 and "'shuffle'" in r.json()["message"]


def test_fewer_examples_than_the_minimum_are_refused(mlos_server: Any, datasets: Path) -> None:
    write_dataset(datasets, "fl/tiny", classified(9, 9))
    write_dataset(datasets, "fl/ten", classified(10, 5))
    srv = mlos_server(datasets_dir=datasets, inference_threads=1)
    assert upload(srv.url, "fl/m@v1", {"model.onnx": linear_onnx(IDENTITY, np.zeros(3))}).is_success
    r = evaluate(srv.url, "fl/m@v1", {"dataset": "fl/tiny"})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "too_few_examples"
    assert "9 example(s)" in r.json()["message"] and "--min-eval-examples 10" in r.json()["message"]
    r = evaluate(srv.url, "fl/m@v1", {"dataset": "fl/ten"})
    assert r.status_code == 200 and r.json()["metrics"]["accuracy"] == 0.5


def test_no_datasets_dir_and_no_runtime_format(mlos_server: Any, datasets: Path) -> None:
    srv = mlos_server(inference_threads=1)
    assert upload(srv.url, "fl/m@v1", {"model.onnx": linear_onnx(IDENTITY, np.zeros(3))}).is_success
    r = evaluate(srv.url, "fl/m@v1", {"dataset": "fl/x"})
    assert r.status_code == 404 and "--datasets-dir" in r.json()["message"]

    write_dataset(datasets, "hf/tiny", classified(20, 20))
    srv = mlos_server(datasets_dir=datasets, inference_threads=1)
    files = {"config.json": b"{}", "model.safetensors": safetensors_bytes(16)}
    assert upload(srv.url, "hf/tiny@v1", files, fmt="safetensors").is_success
    r = evaluate(srv.url, "hf/tiny@v1", {})
    assert r.status_code == 501, r.text
    assert "safetensors" in r.json()["message"] and "ONNX" in r.json()["message"]


def test_tenants_evaluate_only_their_models_on_their_datasets(
    mlos_server: Any, datasets: Path
) -> None:
    for name in ("alpha/data", "bravo/data", "shared"):
        write_dataset(datasets, name, classified(20, 10))
    srv = mlos_server(datasets_dir=datasets, tokens=TOKENS, inference_threads=1)
    model = {"model.onnx": linear_onnx(IDENTITY, np.zeros(3))}
    assert upload(srv.url, "alpha/m@v1", model, headers=ALPHA).is_success
    assert upload(srv.url, "bravo/m@v1", model, headers=BRAVO).is_success

    def status(model_id: str, dataset: str, headers: dict[str, str] | None) -> int:
        r = evaluate(srv.url, model_id, {"dataset": dataset}, headers=headers)
        if r.status_code == 403:
            assert "may not" in r.json()["message"]
        return r.status_code

    assert status("alpha/m@v1", "alpha/data", ALPHA) == 200
    assert status("bravo/m@v1", "bravo/data", ALPHA) == 403  # another tenant's model
    assert status("bravo/m@v1", "alpha/data", ALPHA) == 403  # ... on its own dataset
    assert status("alpha/m@v1", "bravo/data", ALPHA) == 403  # another tenant's dataset
    assert status("alpha/m@v1", "shared", ALPHA) == 403  # outside any namespace
    assert status("alpha/m@v1", "alpha/data", None) == 401
    assert status("bravo/m@v1", "bravo/data", BRAVO) == 200


def test_a_value_the_runtime_refuses_is_not_quoted_back(mlos_server: Any, datasets: Path) -> None:
    # onnxruntime's own words for a token id past MiniLM's vocabulary quote it
    # ("idx=987654 must be within ..."): an evaluation answers the file, the rows and the
    # node, never a value of the data; the runtime's words go to the server's log only
    from tests.fixtures.onnx_models import minilm_path

    data = minilm_path().read_bytes()
    n, seq = 40, 8
    ids = np.full((n, seq), 2023, np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    ids[27, 3] = 987654
    arrays = {
        "input_ids": ids,
        "attention_mask": np.ones((n, seq), np.int64),
        "token_type_ids": np.zeros((n, seq), np.int64),
        "labels": np.zeros((n, seq * 384), np.float32),
    }
    write_dataset(datasets, "nlp/texts", arrays, file="texts.npz")
    srv = mlos_server(datasets_dir=datasets, inference_threads=1)
    assert upload(srv.url, "nlp/minilm@v1", {"model.onnx": data}).status_code == 201

    r = evaluate(srv.url, "nlp/minilm@v1", {"dataset": "nlp/texts", "metrics": ["mse"]})
    assert r.status_code == 400, r.text
    message = r.json()["message"]
    assert "987654" not in r.text
    assert "30521" not in r.text  # nor what the runtime says around it
    assert "nlp/texts/texts.npz" in message
    assert "rows 0..39" in message
    assert "Gather" in message
    assert "987654" in srv.log()  # the server's own log keeps the runtime's words


def test_a_dataset_value_out_of_the_input_s_range_is_not_quoted() -> None:
    onnx_or_skip()
    from mlos_core.errors import BadRequest
    from mlos_core.inference.runtime import TensorSpec, to_array

    spec = TensorSpec("ids", np.dtype(np.int32), "tensor(int32)", ("batch", 4))
    rows = np.full((3, 4), 7, np.int64)
    rows[1, 2] = 98765432109
    with pytest.raises(BadRequest) as caught:
        to_array(spec, rows, where="dataset file d/a.npz (rows 0..2): 'ids'", echo=False)
    assert "98765432109" not in caught.value.message
    assert "d/a.npz (rows 0..2): 'ids' holds a value outside int32" in caught.value.message
    with pytest.raises(BadRequest) as caught:  # a caller's own request: its value is shown
        to_array(spec, rows, where="input 'ids'")
    assert "98765432109" in caught.value.message
