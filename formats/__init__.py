"""vared2's torch-free bottom layer: every on-disk format and the clip preprocessing.

Every stage may import it; it imports numpy, onnxruntime, av and tqdm only (DESIGN.md §1).
"""
