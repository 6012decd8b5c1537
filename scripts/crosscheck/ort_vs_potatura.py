#!/usr/bin/env python3
"""Optional cross-check: run the real models in ../shared/models with ONNX
Runtime and with `potatura run`, and print the relative max error of every
output. Needs: pip install onnxruntime numpy pillow (see
scripts/fixtures/requirements.txt for pinned versions) and a release build
(`cargo build --release`).

Usage: python3 scripts/crosscheck/ort_vs_potatura.py [--shared ../shared]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
from PIL import Image


def mobilenet_inputs(d, n=4):
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    files = sorted(os.listdir(os.path.join(d, "images")))[:n]
    out = []
    for f in files:
        im = Image.open(os.path.join(d, "images", f)).convert("RGB")
        w, h = im.size
        s = 256 / min(w, h)
        im = im.resize((max(224, round(w * s)), max(224, round(h * s))), Image.BILINEAR)
        w, h = im.size
        l, t = (w - 224) // 2, (h - 224) // 2
        x = (np.asarray(im.crop((l, t, l + 224, t + 224)), np.float32) / 255 - mean) / std
        out.append((f, {"input": x.transpose(2, 0, 1)[None].copy()}))
    return out


def minilm_inputs(d):
    names = ["input_ids", "attention_mask", "token_type_ids"]
    return [("eval[:32]", {k: np.load(os.path.join(d, f"eval_{k}.npy"))[:32] for k in names})]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "../../../shared"))
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "../../target/release/potatura"))
    a = ap.parse_args()
    models = [
        ("mobilenet_v2", mobilenet_inputs),
        ("minilm", minilm_inputs),
    ]
    worst = 0.0
    for name, make in models:
        d = os.path.join(a.shared, "models", name)
        path = os.path.join(d, "model.onnx")
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        for label, feeds in make(d):
            t0 = time.time()
            ref = sess.run(None, feeds)
            t_ort = time.time() - t0
            with tempfile.TemporaryDirectory() as tmp:
                args = [a.bin, "run", path, "--output-dir", tmp]
                for k, v in feeds.items():
                    p = os.path.join(tmp, f"in_{k}.npy")
                    np.save(p, v)
                    args += ["--input", f"{k}={p}"]
                t0 = time.time()
                r = subprocess.run(args, capture_output=True, text=True)
                t_pot = time.time() - t0
                if r.returncode != 0:
                    print(f"{name} {label}: potatura failed: {r.stderr.strip()}")
                    worst = float("inf")
                    continue
                for o, r in zip(sess.get_outputs(), ref):
                    got = np.load(os.path.join(tmp, o.name.replace(":", "_").replace("/", "_") + ".npy"))
                    err = float(np.abs(got - r).max() / max(np.abs(r).max(), 1e-6))
                    worst = max(worst, err)
                    extra = ""
                    if name == "mobilenet_v2":
                        extra = f" top1 ort={int(r.argmax())} potatura={int(got.argmax())}"
                    print(f"{name} {label} {o.name} {list(r.shape)}: rel max err {err:.2e}"
                          f" (ort {t_ort*1e3:.1f} ms in-process, potatura {t_pot*1e3:.0f} ms incl. load){extra}")
    print(f"worst relative max error: {worst:.2e}")
    sys.exit(0 if worst <= 1e-4 else 1)


if __name__ == "__main__":
    main()
