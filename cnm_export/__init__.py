"""cnm_export: freeze the mask generator of a CNM checkpoint into one verified ONNX file."""
