#!/usr/bin/env bash
# Demo step 70: inference and federated evaluation. Three mlos-core participants, each with
# its own local data (different sizes, different mixes), form mlos-federated-cluster. A model
# is published as v1.0 and evaluated where the data is (only aggregates come back); v1.1 is
# published and evaluated again; one participant runs an inference request.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if ! missing=$(python -c '
import importlib.util
print(" ".join(m for m in ("onnx", "onnxruntime", "numpy") if importlib.util.find_spec(m) is None))
') || [ -n "$missing" ]; then
  echo "demo step 70 (federated) FAILED: python module(s) missing: ${missing:-?}." >&2
  echo "  make venv installs them (the inference and dev extras); in another environment:" >&2
  echo "  pip install -e '.[inference,dev]'" >&2
  exit 1
fi

work="$DEMO_ROOT/federated"
mkdir -p "$work"
export AXON_HOME="$work/axon-home"  # a config of its own: the federation's participants

# Two builds of one classifier (4 features -> 3 classes): v1.0 mixes the features up, v1.1
# is what a round of federated training would give. Each participant's data never leaves it.
python - "$work" <<'PY'
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

work = Path(sys.argv[1])
true_w = np.array([[1.0, 0.0, 0.2], [0.0, 1.0, 0.0], [0.3, 0.0, 1.0], [0.5, -0.5, 0.0]])


def save(weights: np.ndarray, version: str) -> None:
    w = numpy_helper.from_array(weights.astype(np.float32), "W")
    b = numpy_helper.from_array(np.zeros(3, np.float32), "b")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])]
    graph = helper.make_graph(nodes, "classifier", [x], [y], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    out = work / f"src-{version}"
    out.mkdir()
    onnx.save(model, out / "model.onnx")


rng = np.random.default_rng(7)
save(true_w + rng.normal(scale=0.9, size=true_w.shape), "v1.0")
save(true_w + rng.normal(scale=0.15, size=true_w.shape), "v1.1")
for site, n, shift in (("site-a", 240, 0.0), ("site-b", 600, 0.8), ("site-c", 120, -0.8)):
    x = rng.normal(loc=shift, size=(n, 4)).astype(np.float32)
    labels = np.argmax(x @ true_w + rng.normal(scale=0.3, size=(n, 3)), axis=1)
    data = work / site / "data" / "fl" / "federated-model"
    data.mkdir(parents=True)
    np.savez(data / "local.npz", x=x, labels=labels.astype(np.int64))
    print(f"{site}: {n} local examples in {data.relative_to(work)}/local.npz")
PY
axon install "$work/src-v1.0" --as fl/federated-model@v1.0 -q
axon install "$work/src-v1.1" --as fl/federated-model@v1.1 -q

say "federated: three participants, each serving with --datasets-dir (its local data)"
P1=$(start_mlos_core site-a "$work/site-a/models" --datasets-dir "$work/site-a/data")
P2=$(start_mlos_core site-b "$work/site-b/models" --datasets-dir "$work/site-b/data")
P3=$(start_mlos_core site-c "$work/site-c/models" --datasets-dir "$work/site-c/data")
mkdir -p "$AXON_HOME"
cat >"$AXON_HOME/config.yaml" <<EOF
mlos_targets:
  site-a: {endpoint: "$P1", access_method: api}
  site-b: {endpoint: "$P2", access_method: api}
  site-c: {endpoint: "$P3", access_method: api}
clusters:
  mlos-federated-cluster:
    instances: [site-a, site-b, site-c]
    strategy: all
EOF
run cat "$AXON_HOME/config.yaml"

say "federated: publish v1.0 to every participant, evaluate it where the data is"
run axon publish fl/federated-model@v1.0 --target mlos-federated-cluster
run mlos federated evaluate fl/federated-model@v1.0 --target mlos-federated-cluster

say "federated: after a training round, publish v1.1 and evaluate again"
run axon publish fl/federated-model@v1.1 --target mlos-federated-cluster
run mlos federated evaluate fl/federated-model@v1.1 --target mlos-federated-cluster
say "federated: v1.0 against v1.1 (the aggregates, from --json)"
for v in v1.0 v1.1; do
  mlos federated evaluate "fl/federated-model@$v" --target mlos-federated-cluster --json \
    | python -c 'import json, sys; r = json.load(sys.stdin); a = r["aggregate"]; m = a["metrics"]
print("%s: accuracy %.3f, loss %.3f over %d examples" % (r["model"], m["accuracy"], m["loss"], a["examples"]))'
done

say "federated: one participant answers an inference request (the upstream endpoint)"
run curl -s -X POST "$P1/models/fl/federated-model@v1.1/inference?include_outputs=true" \
  -H 'Content-Type: application/json' -d '{"x": [[2.0, 0.1, 0.3, 0.0]]}'
echo
run curl -s -X POST "$P1/models/fl/federated-model@v1.1/inference" \
  -H 'Content-Type: application/json' -d '{"x": [[2.0, 0.1, 0.3]]}'
echo

say "federated: a participant holding another build is named and left out (exit 9)"
# site-c gets other bytes under the same version (v1.0's weights as v1.1), published from
# another machine's cache (another AXON_HOME): this cache still holds the real v1.1, and the
# cache's build is the one evaluated
AXON_HOME="$work/elsewhere" axon install "$work/src-v1.0" --as fl/federated-model@v1.1 -q
run env AXON_HOME="$work/elsewhere" axon publish fl/federated-model@v1.1 --target "$P3" -q
set +e
run mlos federated evaluate fl/federated-model@v1.1 --target mlos-federated-cluster
echo "exit code: $? (9: site-c holds another build and did not take part)"
run mlos federated evaluate fl/federated-model@v1.1 --target mlos-federated-cluster --strict
echo "exit code: $? (10: --strict evaluates nothing while the builds differ)"
set -e
