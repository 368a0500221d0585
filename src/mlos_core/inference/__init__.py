"""Running models: ONNX Runtime sessions (:mod:`.runtime`), the cache of loaded models
(:mod:`.sessions`) and evaluation on datasets held by the instance (:mod:`.evaluate`).

numpy and onnxruntime come with the ``inference`` extra; without onnxruntime the server still
starts, and inference answers 501 saying what to install.
"""
