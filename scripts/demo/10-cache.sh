#!/usr/bin/env bash
# Step 10: the developer's cache. Generates a small Hugging-Face-like model, installs it into
# the demo AXON_HOME (as demo/tiny-bert@v1, which later steps publish), and shows list, info
# and verify, including verify catching a tampered file.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

src="$DEMO_ROOT/example-model"
say "cache: generate a small example model in $src"
python3 - "$src" <<'PY'
import json, os, struct, sys
root = sys.argv[1]
os.makedirs(os.path.join(root, "1_Pooling"), exist_ok=True)
data = os.urandom(256 * 1024)
header = json.dumps({"weight": {"dtype": "F32", "shape": [len(data) // 4],
                                "data_offsets": [0, len(data)]}}).encode()
header += b" " * (-len(header) % 8)
files = {
    "config.json": json.dumps({"model_type": "bert", "hidden_size": 64, "vocab_size": 128}),
    "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "WordPiece"}}),
    "vocab.txt": "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\nworld\n",
    "1_Pooling/config.json": json.dumps({"word_embedding_dimension": 64}),
}
for rel, text in files.items():
    with open(os.path.join(root, rel), "w") as fh:
        fh.write(text)
with open(os.path.join(root, "model.safetensors"), "wb") as fh:
    fh.write(struct.pack("<Q", len(header)) + header + data)
PY
ls -R "$src"

say "cache: axon init creates the config file and the cache"
run axon init

say "cache: install the directory (files hashed, format and io detected, one atomic rename)"
run axon install "$src" --as demo/tiny-bert@v1

say "cache: a .axon archive (tar.gz) installs too"
tar -C "$src" -czf "$DEMO_ROOT/tiny-bert.axon" .
run axon install "$DEMO_ROOT/tiny-bert.axon" --as demo/tiny-bert@v2

say "cache: list and info"
run axon list
run axon info demo/tiny-bert@v1

say "cache: verify (unchanged files are not read again; --full re-reads everything)"
run axon verify demo/tiny-bert@v1
run axon verify demo/tiny-bert@v1 --full

say "cache: tamper with a file: verify names it and exits 5"
models="$AXON_HOME/cache/models/demo/tiny-bert"
echo "tampered" >> "$models/v2/vocab.txt"
set +e
run axon verify demo/tiny-bert@v2
echo "exit code: $?"
set -e
run axon uninstall demo/tiny-bert@v2
run axon list
