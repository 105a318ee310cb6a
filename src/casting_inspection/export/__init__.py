"""The pipeline's last step: the trained model, its operating point and guard as one ONNX file (and its int8 twin)."""
