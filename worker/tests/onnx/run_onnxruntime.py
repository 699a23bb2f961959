#!/usr/bin/env python3
"""Embeds faces with an exported ONNX model the way a user of insightface's models would.

    run_onnxruntime.py MODEL.onnx PIXELS.npy OUT.npy

PIXELS.npy: float32 [N, 112, 112, 3] RGB pixel values 0..255 (the faces of the folder that
`lgaf embed` read). The model must pass the ONNX checker, be opset 18 or later (what the
export promises), and take any batch size (the faces go through in two batches of
different sizes). OUT.npy gets the L2-normalised embeddings [N, D], which the test compares
with `lgaf embed`'s.
"""

import sys

import numpy as np
import onnx
import onnxruntime as ort

model_path, pixels_path, out_path = sys.argv[1:4]
onnx.checker.check_model(model_path, full_check=True)
proto = onnx.load(model_path)
opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
assert opset >= 18, f"opset {opset}"
batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
assert batch_dim.dim_param, f"the batch dimension is fixed: {batch_dim}"

pixels = np.load(pixels_path)
blob = ((pixels - 127.5) / 127.5).transpose(0, 3, 1, 2).astype(np.float32)
session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
split = max(1, len(blob) // 3)
kappa = np.concatenate([session.run(None, {name: part})[0] for part in (blob[:split], blob[split:])])
embeddings = kappa / np.linalg.norm(kappa, axis=1, keepdims=True)
np.save(out_path, embeddings.astype(np.float32))
