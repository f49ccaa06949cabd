"""exporters: ship few-step samplers.

- ``exporters.onnx``: the K-step sampler graph and the one-jump graph of a flow-map student, with metadata.
- ``exporters.quantize``: fp16 and int8 (static QDQ, dynamic, mixed) for ONNX Runtime; torchao for PyTorch serving.
- ``exporters.runtime``: an ONNX Runtime sampler that needs numpy and onnxruntime only (no torch).
- ``exporters.report``: ``distill export`` — every artifact checked against PyTorch (parity, latency, FD).

This package imports nothing heavy itself, so ``exporters.runtime`` runs where torch is not installed.
"""
