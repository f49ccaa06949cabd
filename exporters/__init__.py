"""exporters: ship few-step samplers (ONNX, fp16/int8 with ONNX Runtime, torchao). Built in a later issue."""
