"""torchvision's VideoResNet-18s → VA-RED2 models: ``from_torchvision`` (a model) and ``convert_torchvision``
(a state-dict file the user downloaded: ``vared2 convert``), never unpickling code nor downloading anything.

The module tree and state-dict names of ``VaRed2VideoResNet`` are torchvision's, so the weights load as they are;
the extra keys (the gate, the cheap ops, the per-bucket BatchNorm statistics) start at identity / the full bucket's.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from vared2.formats.errors import CheckFailed, InputError, InputTypeError

from .buckets import BACKBONES
from .config import ModelConfig
from .video_resnet import STAGE_PLANES, BucketsArg, VaRed2VideoResNet, bucket_names

__all__ = ["convert_torchvision", "detect_backbone", "from_torchvision", "read_state_dict"]

#: The torchvision weights enum of each backbone (its URL, file name and Kinetics-400 class names; nothing fetched).
WEIGHTS_ENUMS = {"r2plus1d_18": "R2Plus1D_18_Weights", "r3d_18": "R3D_18_Weights", "mc3_18": "MC3_18_Weights"}
#: How far the converted full bucket may be from torchvision's model on the same input.
PARITY_TOLERANCE = 1e-5


def detect_backbone(model: nn.Module) -> str:
    """Which torchvision VideoResNet-18 ``model`` is, from its structure."""
    from torchvision.models.video.resnet import BasicBlock as TvBasicBlock
    from torchvision.models.video.resnet import Conv2Plus1D as TvConv2Plus1D
    from torchvision.models.video.resnet import VideoResNet

    if not isinstance(model, VideoResNet):
        raise InputTypeError(f"expected a torchvision VideoResNet, got {type(model).__name__}")
    layers = [model.layer1, model.layer2, model.layer3, model.layer4]
    if [len(layer) for layer in layers] != [2, 2, 2, 2] or not all(
        isinstance(block, TvBasicBlock) for layer in layers for block in layer
    ):
        raise InputError("only the 18-layer BasicBlock VideoResNets (r3d_18, mc3_18, r2plus1d_18) are supported")
    first = model.layer2[0].conv1[0]
    if len(model.stem) == 6 and isinstance(first, TvConv2Plus1D):
        return "r2plus1d_18"
    if len(model.stem) == 3 and isinstance(first, nn.Conv3d):
        if first.kernel_size == (3, 3, 3):
            return "r3d_18"
        if first.kernel_size == (1, 3, 3):
            return "mc3_18"
    raise InputError("unrecognised VideoResNet layout: not r3d_18, mc3_18 or r2plus1d_18")


def from_torchvision(
    model: nn.Module,
    buckets: BucketsArg = None,
    *,
    frames: int = 16,
    size: int = 112,
    labels: Sequence[str] = (),
) -> VaRed2VideoResNet:
    """Convert a torchvision ``r3d_18``/``mc3_18``/``r2plus1d_18`` (weights copied; cheap ops at identity init).

    ``buckets=None`` takes the backbone's default table for ``frames``. The result is in the source's mode.
    """
    backbone = detect_backbone(model)
    state = model.state_dict()
    fc = model.get_submodule("fc")
    assert isinstance(fc, nn.Linear)
    if fc.in_features != STAGE_PLANES[-1]:
        raise InputError(f"expected a full-width VideoResNet (fc over {STAGE_PLANES[-1]} features), got {fc}")
    config = ModelConfig(
        backbone=backbone,
        num_classes=fc.out_features,
        frames=frames,
        size=size,
        buckets=bucket_names(buckets),
        labels=tuple(labels),
    )
    ours = VaRed2VideoResNet(config)
    result = ours.load_state_dict(state, strict=False)
    extra = [k for k in result.missing_keys if not _is_vared2_key(k)]
    if extra or result.unexpected_keys:
        raise InputError(
            f"torchvision {backbone} state dict does not match: missing {extra}, unexpected {result.unexpected_keys}"
        )
    for bn in ours.bucket_batchnorms():
        bn.copy_full_statistics()
    return ours.train(model.training)


def _is_vared2_key(key: str) -> bool:
    """State-dict keys that torchvision models do not have: the gate, the cheap-op parameters and the
    per-bucket BatchNorm statistics."""
    parts = key.split(".")
    extra = ("temporal_scale", "temporal_shift", "channel_weight", "channel_bias")
    return parts[0] == "gate" or any(p in extra for p in parts) or parts[-1].startswith("bucket_running_")


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict from ``path``: safetensors, or a ``torch.save``d dict of tensors read with
    ``torch.load(weights_only=True)``, which refuses a pickle that would run code (a whole pickled model, say)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--weights {path}: no such file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise InputError(f"--weights {path}: not a readable safetensors file ({error})") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0][:200]
        raise InputError(
            f"--weights {path}: a pickle with code in it, not a plain state dict; vared2 does not unpickle code "
            f"({reason}). Save the weights as a state dict (torch.save(model.state_dict(), f)) or as safetensors"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        raise InputError(f"--weights {path}: not a torch.save file ({error})") from None
    if isinstance(loaded, dict) and len(loaded) == 1 and isinstance(next(iter(loaded.values())), dict):
        loaded = next(iter(loaded.values()))  # {"state_dict": {...}} or {"model": {...}}
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise InputError(f"--weights {path}: expected a dict of tensors (a state dict), got {type(loaded).__name__}")
    return dict(loaded)


def default_weights_file(backbone: str) -> tuple[Path, str]:
    """Where torchvision keeps its Kinetics-400 weights for ``backbone`` once downloaded, and their URL."""
    import torchvision.models.video as tv

    weights = getattr(tv, WEIGHTS_ENUMS[backbone]).KINETICS400_V1
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name, weights.url


def convert_torchvision(
    source: str, weights: Path | None, *, frames: int = 16, size: int = 112, buckets: BucketsArg = None
) -> tuple[VaRed2VideoResNet, float]:
    """``source = "torchvision:<backbone>"`` with the weights in ``weights`` (default: torchvision's download
    cache) → the VA-RED2 model (eval mode) and the largest difference of its full bucket from torchvision's model
    on one random clip, which must be <= ``PARITY_TOLERANCE``. Nothing is downloaded."""
    import torchvision.models.video as tv

    family, _, backbone = source.partition(":")
    if family != "torchvision" or backbone not in BACKBONES:
        raise InputError(f"--from {source!r}: expected torchvision:<backbone>, one of {', '.join(BACKBONES)}")
    if weights is None:
        weights, url = default_weights_file(backbone)
        if not weights.is_file():
            raise InputError(
                f"--from {source}: no --weights given and none in torchvision's cache ({weights}); vared2 downloads "
                f"nothing: fetch {url} yourself and pass --weights FILE"
            )
    state = read_state_dict(weights)
    if "fc.weight" not in state or state["fc.weight"].dim() != 2:
        raise InputError(f"--weights {weights}: no classifier tensor 'fc.weight': not a torchvision VideoResNet")
    num_classes = int(state["fc.weight"].shape[0])
    reference = getattr(tv, backbone)(weights=None, num_classes=num_classes)
    try:
        reference.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise InputError(f"--weights {weights}: not a torchvision {backbone} state dict ({error})") from None
    reference.eval()
    kinetics = getattr(tv, WEIGHTS_ENUMS[backbone]).KINETICS400_V1.meta["categories"]
    labels = kinetics if num_classes == len(kinetics) else ()
    model = from_torchvision(reference, buckets, frames=frames, size=size, labels=labels).eval()
    clip = torch.randn(2, 3, frames, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = float((model(clip, bucket=0) - reference(clip)).abs().max())
    if not difference <= PARITY_TOLERANCE:
        raise CheckFailed(f"converted {source}: the full bucket differs from torchvision's model by {difference:.3g}")
    return model, difference
