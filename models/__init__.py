"""VA-RED2 in PyTorch: dynamic convolution, gate, bucket table, VideoResNet backbones (DESIGN.md §2)."""
