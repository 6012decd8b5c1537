"""Sentence-embedding fidelity of a pruned MiniLM against the dense one.

Usage: python scripts/crosscheck/minilm_cosine.py PRUNED.onnx [more.onnx ...]
Needs ../shared/models/minilm (not in a fresh clone) and onnxruntime.
The embedding is the attention-mask-weighted mean of last_hidden_state over
the 256 eval sentences; the score is the mean cosine similarity to the
dense model's embedding (the issue's definition).
"""

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

D = Path(__file__).resolve().parents[2].parent / "shared/models/minilm"


def embed(path):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {k: np.load(D / f"eval_{k}.npy") for k in ("input_ids", "attention_mask", "token_type_ids")}
    out = s.run(None, feeds)[0]
    m = feeds["attention_mask"][..., None].astype(np.float32)
    e = (out * m).sum(1) / m.sum(1)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


dense = embed(D / "model.onnx")
for p in sys.argv[1:]:
    print(f"{p}: mean cosine {(embed(p) * dense).sum(1).mean():.4f}")
