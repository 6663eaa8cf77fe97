"""The two custom ops of a gated partial convolution (DESIGN.md §3).

``reference`` holds their one true semantics (PyTorch); the ONNX function bodies, the Triton kernels and
the TensorRT plugins are checked against it. This package's ``__init__`` imports nothing heavy: the
TensorRT plugin module loads TensorRT only when asked to register.
"""

DOMAIN = "vared2"
VERSION = 1
TEMPORAL_RECONSTRUCT = "TemporalReconstruct"
CHANNEL_RECONSTRUCT = "ChannelReconstruct"
