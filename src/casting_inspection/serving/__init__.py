"""The model at work, free of PyTorch and params.yaml: the ONNX inspector, the HTTP service, the watched folder,
the review station and the `casting-inspect` command."""
