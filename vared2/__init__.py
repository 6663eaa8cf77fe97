"""vared2: deploy VA-RED2 input-adaptive video networks as one engine per policy bucket.

The stages live in their own subpackages (``vared2.models``, ``vared2.export``, ``vared2.runtime``, …).
This root module stays import-light: ``vared2.runtime`` is imported through it on edge devices that have
no torch.
"""

__version__ = "0.1.0"
