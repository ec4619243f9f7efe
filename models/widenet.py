"""Wide, hardware-friendly CNNs in the style of the airbench CIFAR-10 networks (Jordan, 2024).

The network is a 2x2 *whitening* stem followed by conv groups. A group is

    conv3x3 -> [maxpool 2] -> BatchNorm -> GELU,  then (depth - 1) more conv3x3 -> BatchNorm,
    with a residual over the last two when depth is 3 (GELU after the sum),

with BatchNorm scales fixed at 1 (only their biases train: with every conv followed by a
BatchNorm the network is scale-invariant in its conv weights). Convs are wide and their channel
counts multiples of 64, which is what the CPU's matrix units (AMX / VNNI) and a GPU's tensor
cores run fast; MSDNet's narrow dense layers are not.

The stem's weights are not learned: :meth:`WideNet.init_from_data` sets them once, before
training, to the whitening transform (eigenvectors of the 2x2 patch covariance, each filter and
its negative) of a sample of training images; only its bias trains.

Exits read a group's output through global max pooling and one linear layer whose input is
scaled by 1/9 (the airbench head: small logits at initialisation under large learning rates).
``exit_after`` picks the groups that carry an exit; stage ``k`` runs the groups up to exit ``k``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.multi_exit import ExitHead, MultiExitNet, State
from models.registry import register_model

GroupSpec = tuple[int, int, bool]
"""``(width, depth, pool)``: output channels, convs (1-3), whether the first conv is followed by
a 2x2 max-pool."""

WHITEN_KERNEL = 2
WHITEN_WIDTH = 2 * 3 * WHITEN_KERNEL**2  # each patch direction and its negative


def frozen_scale_bn(channels: int, momentum: float) -> nn.BatchNorm2d:
    """BatchNorm whose scale stays 1 (not trained); its bias trains."""
    bn = nn.BatchNorm2d(channels, momentum=momentum)
    bn.weight.requires_grad_(False)
    return bn


def dirac_conv(c_in: int, c_out: int) -> nn.Conv2d:
    """3x3 'same' conv, no bias; its first ``min(c_in, c_out)`` filters start as the identity
    (airbench's dirac initialisation: the net starts close to its shallower self)."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        n = min(c_in, c_out)
        nn.init.dirac_(conv.weight[:n])
    return conv


class ConvGroup(nn.Module):
    """One group (module docstring): ``[N, c_in, H, W]`` -> ``[N, width, H', W']``, H' = H // 2
    when pooling."""

    def __init__(self, c_in: int, width: int, depth: int, pool: bool, bn_momentum: float) -> None:
        super().__init__()
        if not 1 <= depth <= 3:
            raise ValueError(f"group depth must be 1, 2 or 3, got {depth}")
        self.residual = depth == 3
        self.conv1 = dirac_conv(c_in, width)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.norm1 = frozen_scale_bn(width, bn_momentum)
        self.rest = nn.ModuleList()
        for _ in range(depth - 1):
            self.rest.append(
                nn.Sequential(dirac_conv(width, width), frozen_scale_bn(width, bn_momentum))
            )
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        if not self.rest:
            return x
        if self.residual:
            y = self.rest[1](self.act(self.rest[0](x)))
            return self.act(x + y)
        return self.act(self.rest[0](x))


class ScaledMaxPool(nn.Module):
    """``[N, C, H, W]`` -> ``[N, C]``: global max, times ``scale``."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return torch.amax(x, dim=(2, 3)) * self.scale


class WideNet(MultiExitNet):
    """Whitening stem + conv groups with exits after the groups in ``exit_after``.

    Args:
        groups: one :data:`GroupSpec` per group.
        exit_after: indices of the groups followed by an exit (sorted; the last group's included).
        head_scale: factor on the pooled feature each exit reads.
        bn_momentum: BatchNorm running-statistics momentum (PyTorch's convention; airbench's
            fast 0.4 suits its lookahead).
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        groups: Sequence[Sequence[int | bool]] = ((64, 2, True), (256, 2, True), (256, 2, True)),
        exit_after: Sequence[int] | None = None,
        head_scale: float = 1 / 9,
        bn_momentum: float = 0.4,
        isc: bool = False,
        isc_detach: bool = False,
    ) -> None:
        super().__init__(num_classes, isc=isc, isc_detach=isc_detach)
        specs = [(int(w), int(d), bool(p)) for w, d, p in groups]
        last = len(specs) - 1
        after = sorted(exit_after) if exit_after is not None else [last]
        if not after or after[-1] != last or after[0] < 0 or len(set(after)) != len(after):
            raise ValueError(f"exit_after must be distinct group indices ending at {last}, got {after}")
        whiten = nn.Conv2d(3, WHITEN_WIDTH, WHITEN_KERNEL, padding=0, bias=True)
        whiten.weight.requires_grad_(False)  # set by init_from_data, never trained
        assert whiten.bias is not None  # bias=True
        nn.init.zeros_(whiten.bias)
        self.stem = nn.Sequential(whiten, nn.GELU())
        widths = [WHITEN_WIDTH] + [w for w, _, _ in specs]
        all_groups = [ConvGroup(widths[i], w, d, p, bn_momentum) for i, (w, d, p) in enumerate(specs)]
        bounds = [0, *[a + 1 for a in after]]
        self.stages = nn.ModuleList(
            nn.Sequential(*all_groups[bounds[k] : bounds[k + 1]]) for k in range(len(after))
        )
        # airbench's head has no bias; an ExitHead's starts at zero, its weights as nn.Linear's
        self.exits = nn.ModuleList(
            ExitHead(
                ScaledMaxPool(head_scale),
                widths[a + 1],
                num_classes,
                isc=isc and k > 0,
                isc_detach=isc_detach,
            )
            for k, a in enumerate(after)
        )

    def run_block(self, k: int, features: State) -> State:
        x = features[0]
        if k == 0:
            x = self.stem(x)
        return (self.stages[k](x),)

    def exit_input(self, features: State) -> Tensor:
        return features[0]

    def stage_blocks(self) -> list[nn.Module]:
        return [nn.Sequential(self.stem, self.stages[0]), *self.stages[1:]]

    @torch.no_grad()
    def init_from_data(self, images: Tensor, eps: float = 5e-4) -> None:
        """Set the stem to the whitening transform of ``images`` (``[N, 3, H, W]``, normalised).

        The 12 eigenvectors of the 2x2x3 patch covariance, each divided by the square root of its
        eigenvalue (+ ``eps``), and their negatives make the stem's 24 filters.
        """
        whiten = self.stem[0]
        assert isinstance(whiten, nn.Conv2d)  # built so in __init__
        w = whiten.weight  # [24, 3, 2, 2]
        patches = images.float().unfold(2, WHITEN_KERNEL, 1).unfold(3, WHITEN_KERNEL, 1)
        flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * WHITEN_KERNEL**2)  # [P, 12]
        cov = flat.T @ flat / flat.shape[0]
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).flip(0)
        filters = filters.reshape(-1, 3, WHITEN_KERNEL, WHITEN_KERNEL)
        w.copy_(torch.cat([filters, -filters]).to(w.dtype))


@register_model()
def widenet(**kwargs: object) -> WideNet:
    """WideNet, every argument from ``kwargs`` (default: the airbench94 layout, one exit)."""
    return WideNet(**kwargs)  # type: ignore[arg-type]


@register_model()
def widenet_teacher(**kwargs: object) -> WideNet:
    """The teacher: groups of 128, 384, 384 channels, two convs each (the airbench95 layout), one
    exit; 302 M multiply-adds per 32x32 image."""
    cfg: dict[str, object] = dict(groups=((128, 2, True), (384, 2, True), (384, 2, True)))
    return WideNet(**{**cfg, **kwargs})  # type: ignore[arg-type]
