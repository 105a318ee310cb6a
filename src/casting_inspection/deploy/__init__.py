"""The model at work: ONNX export, and the serving path (inference, service, watch, the `casting-inspect` CLI),
which needs neither PyTorch nor params.yaml."""
