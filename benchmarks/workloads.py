"""The workloads: tensor shapes and land masks named after the people who
run them.

Each workload is one batch of (encoded) fields as a user of ddm_fast trains
or samples it. GPU workloads are the sizes the users run; the ``*_cpu``
variants keep the layout (channels, mask pattern) at a size a CPU handles in
seconds. ``quick_*`` are the tiny sizes of ``--quick`` (the CI smoke run).

Land masks (1 = ocean/valid, 0 = land) are spatially coherent, like real
coastlines: a smooth random field thresholded at the quantile that gives
exactly the stated land fraction. A mask i.i.d. per pixel would be the
worst case for a kernel that skips masked blocks, a real coastline is not.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import torch

__all__ = ["Workload", "WORKLOADS", "DEFAULTS", "QUICK", "get", "land_mask"]


@dataclass(frozen=True)
class Workload:
    name: str
    user: str                       # who runs this size
    shape: Tuple[int, ...]
    land_fraction: Optional[float]  # None: no mask
    mask_layout: Optional[str]      # "broadcast" (1, 1, H, W) over batch and
                                    # channels; "one_channel" (1, C, H, W),
                                    # land on channel 0 only; None
    devices: Tuple[str, ...]        # where it may run
    note: str = ""

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def network(self) -> str:
        """The denoiser of the whole-step cases: the Lorenz-96 example's
        network for (B, 40) states, a depthwise-conv stand-in for grids."""
        return "l96" if len(self.shape) == 2 else "grid"

    def mask(self, device) -> Optional[torch.Tensor]:
        if self.land_fraction is None:
            return None
        if self.mask_layout == "broadcast":
            h, w = self.shape[-2:]
            return land_mask(h, w, self.land_fraction).reshape(1, 1, h, w).to(device)
        if self.mask_layout == "one_channel":
            channels, h, w = self.shape[1:]
            mask = torch.ones((1, channels, h, w), dtype=torch.bool)
            mask[0, 0] = land_mask(h, w, self.land_fraction)
            return mask.to(device)
        raise ValueError(f"unknown mask layout {self.mask_layout!r}")

    def describe(self) -> Dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["devices"] = list(self.devices)
        d["numel"] = self.numel
        d["network"] = self.network
        return d


def land_mask(h: int, w: int, land_fraction: float, seed: int = 0) -> torch.Tensor:
    """(h, w) bool, True = ocean, with exactly round(land_fraction * h * w)
    land points, in coherent blobs (smoothed noise thresholded at its
    quantile)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn((1, 1, max(2, h // 16), max(2, w // 16)), generator=gen,
                         dtype=torch.float64)
    field = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic",
                                            align_corners=False)
    field = field.reshape(-1) + 1e-6 * torch.randn(h * w, generator=gen,
                                                   dtype=torch.float64)
    n_land = int(round(land_fraction * h * w))
    ocean = torch.ones(h * w, dtype=torch.bool)
    if n_land > 0:
        ocean[torch.topk(field, n_land).indices] = False
    return ocean.reshape(h, w)


_ALL = [
    Workload("lorenz96", "Lorenz-96 example (examples/lorenz96): 1024 states of 40 variables",
             (1024, 40), None, None, ("cpu", "cuda")),
    Workload("sea_ice_regional", "regional sea-ice emulator: 256 patches, 5 variables, 64 x 64",
             (256, 5, 64, 64), 0.30, "broadcast", ("cpu", "cuda"),
             "land fraction of a coastal region (assumed 30 %)"),
    Workload("pan_arctic", "pan-Arctic sea-ice model: 16 x 5 x 512 x 512",
             (16, 5, 512, 512), 0.515, "broadcast", ("cpu", "cuda")),
    Workload("pan_arctic_cpu", "pan-Arctic layout at CPU size: 2 x 5 x 512 x 512",
             (2, 5, 512, 512), 0.515, "broadcast", ("cpu", "cuda")),
    Workload("global_025", "global 0.25 deg weather model: 8 x 84 x 721 x 1440, land on one channel",
             (8, 84, 721, 1440), 0.29, "one_channel", ("cuda",),
             "2.8 GB per float32 tensor: GPU only"),
    Workload("global_1deg_cpu", "global layout at 1 deg for CPUs: 1 x 84 x 181 x 360, land on one channel",
             (1, 84, 181, 360), 0.29, "one_channel", ("cpu", "cuda")),
    Workload("cpu_target", "reference CPU target: 16 x 4 x 256 x 256 float32, 30 % land broadcast",
             (16, 4, 256, 256), 0.30, "broadcast", ("cpu", "cuda")),
    Workload("quick_l96", "--quick: tiny Lorenz-96 batch", (64, 40), None, None,
             ("cpu", "cuda")),
    Workload("quick_grid", "--quick: tiny masked grid", (2, 3, 32, 32), 0.30,
             "broadcast", ("cpu", "cuda")),
]

WORKLOADS: Dict[str, Workload] = {w.name: w for w in _ALL}
DEFAULTS: Dict[str, List[str]] = {
    "cpu": ["lorenz96", "sea_ice_regional", "pan_arctic_cpu", "global_1deg_cpu",
            "cpu_target"],
    "cuda": ["lorenz96", "sea_ice_regional", "pan_arctic", "global_025"],
}
QUICK = ["quick_l96", "quick_grid"]


def get(names: str, device_type: str, quick: bool) -> List[Workload]:
    """Workloads from a comma-separated ``--workload`` value ('' or
    'default': this device's defaults, or the quick ones with ``quick``;
    'all': every workload this device may run)."""
    names = (names or "").strip()
    if names in ("", "default"):
        chosen = QUICK if quick else DEFAULTS[device_type]
    elif names == "all":
        chosen = [w.name for w in _ALL if device_type in w.devices
                  and not w.name.startswith("quick_")]
    else:
        chosen = [n.strip() for n in names.split(",") if n.strip()]
    out = []
    for name in chosen:
        if name not in WORKLOADS:
            raise ValueError(f"unknown workload {name!r}; choose from "
                             f"{', '.join(WORKLOADS)} (or 'all')")
        w = WORKLOADS[name]
        if device_type not in w.devices:
            raise ValueError(f"workload {name!r} runs on {', '.join(w.devices)} "
                             f"only ({w.note or 'too large'}); on {device_type} "
                             f"use one of {', '.join(DEFAULTS[device_type])}")
        out.append(w)
    return out
