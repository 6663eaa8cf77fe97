"""How much of a trained-like model's weights the engines share (docs/design.md, "BatchNorm statistics per bucket").

Full-size ``r2plus1d_18`` (8×112×112, its 6 default buckets, random weights) with random BatchNorm statistics *per
bucket*, as training leaves them — an untrained model's buckets share their statistics and would hide the
question — exported and built for ONNX Runtime; prints what ``weights.bin`` stores against what the engines
reference.

    .venv/bin/python bench/scripts/weights_sharing.py --out /tmp/sharing
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vared2.engines.build import build_engines
from vared2.export.onnx_export import export_model
from vared2.formats.manifest import Manifest
from vared2.models import VaRed2VideoResNet, r2plus1d_18
from vared2.models.batchnorm import BucketBatchNorm3d


def with_bucket_statistics(model: VaRed2VideoResNet, seed: int = 0) -> VaRed2VideoResNet:
    """Every reduced bucket gets its own random BatchNorm means and variances."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BucketBatchNorm3d):
                rows = module.bucket_running_mean.shape
                module.bucket_running_mean.copy_(torch.rand(rows, generator=generator) - 0.5)
                module.bucket_running_var.copy_(torch.rand(rows, generator=generator) + 0.5)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="an absent or empty directory")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = with_bucket_statistics(r2plus1d_18(frames=8, size=112))
    with torch.no_grad():
        export_model(model, args.out / "onnx")
    engines = build_engines(args.out / "onnx", args.out / "engines", progress=False)
    options = Manifest.load(engines).build_options
    stored, referenced = options["weights_stored_bytes"], options["weights_referenced_bytes"]
    size = (engines / "weights.bin").stat().st_size
    print(f"weights.bin {size / 2**20:.1f} MiB: {stored / 1e6:.1f} MB stored of {referenced / 1e6:.1f} MB referenced")


if __name__ == "__main__":
    main()
