"""MSDNet: Multi-Scale Dense Networks (Huang et al., ICLR 2018), with optional ISC exit heads.

Reads top to bottom: building blocks, then the network, then the registered variants. The
hyperparameters are those of the official PyTorch code (snake_case here):

    n_blocks (nBlocks)      number of blocks = number of exits
    step, stepmode, base    layers per block: block 0 has ``base``; block i has ``step``
                            ("even") or ``step * i + 1`` ("lin_grow")
    n_channels (nChannels)  channels of the stem at the finest scale
    growth_rate             channels each dense layer adds at the finest scale
    gr_factor, bn_factor    per-scale multipliers of the growth rate / bottleneck width
    n_scales                number of scales (len(gr_factor)); 3 for CIFAR, 4 for ImageNet
    prune                   "max" or "min": when coarser-only layers drop the finest scales
    reduction               channel compression of the transition layers (0 disables them)
    bottleneck              1x1 bottleneck conv before each 3x3 conv
    stem                    "cifar" (3x3 conv, 32x32) or "imagenet" (7x7/2 conv + max-pool)

Classifier ``k`` reads the coarsest scale after block ``k`` (MSDNet section 4).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from models.layers import conv_bn_relu
from models.multi_exit import ExitHead, MultiExitNet, State
from models.registry import register_model

StemKind = Literal["cifar", "imagenet"]


class DenseConv(nn.Module):
    """The new features one dense layer computes at one scale from one input scale.

    Optional 1x1 bottleneck (width ``min(c_in, bn_width * c_out)``) then a 3x3 conv, stride 1
    (same scale) or 2 (from the next finer scale).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, bottleneck: bool, bn_width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_inner = c_in
        if bottleneck:
            c_inner = min(c_in, bn_width * c_out)
            layers.append(conv_bn_relu(c_in, c_inner, kernel=1))
        layers.append(conv_bn_relu(c_inner, c_out, kernel=3, stride=stride))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ScaleUnit(nn.Module):
    """Output of one MSDNet layer at one scale: dense concatenation of old and new features.

    ``[x_same, conv(x_same)]`` at the finest kept scale, else
    ``[x_same, strided_conv(x_finer), conv(x_same)]`` with each conv producing half the growth.
    """

    def __init__(
        self,
        c_same: int,
        c_finer: int | None,
        growth: int,
        bottleneck: bool,
        bn_width_same: int,
        bn_width_finer: int,
    ) -> None:
        super().__init__()
        self.down: DenseConv | None = None
        if c_finer is None:
            self.same = DenseConv(c_same, growth, 1, bottleneck, bn_width_same)
        else:
            self.down = DenseConv(c_finer, growth // 2, 2, bottleneck, bn_width_finer)
            self.same = DenseConv(c_same, growth // 2, 1, bottleneck, bn_width_same)

    def forward(self, same: Tensor, finer: Tensor | None = None) -> Tensor:
        if self.down is None:
            return torch.cat([same, self.same(same)], dim=1)
        assert finer is not None  # structural invariant, not user input
        return torch.cat([same, self.down(finer), self.same(same)], dim=1)


class MSDLayer(nn.Module):
    """One dense layer across scales: ``in_scales`` feature maps -> ``out_scales`` feature maps.

    The kept scales are the ``out_scales`` coarsest ones. When a finer scale is dropped
    (``in_scales > out_scales``), the finest kept scale still reads it through a strided conv.
    """

    def __init__(
        self,
        c_in: int,
        growth_rate: int,
        n_scales: int,
        in_scales: int,
        out_scales: int,
        gr_factor: list[int],
        bn_factor: list[int],
        bottleneck: bool,
    ) -> None:
        super().__init__()
        self.in_scales, self.out_scales = in_scales, out_scales
        self.dropped = in_scales - out_scales
        offset = n_scales - out_scales  # absolute index of the finest kept scale
        units = []
        for s in range(offset, n_scales):
            reads_finer = s > offset or self.dropped > 0
            units.append(
                ScaleUnit(
                    c_same=c_in * gr_factor[s],
                    c_finer=c_in * gr_factor[s - 1] if reads_finer else None,
                    growth=growth_rate * gr_factor[s],
                    bottleneck=bottleneck,
                    bn_width_same=bn_factor[s],
                    bn_width_finer=bn_factor[s - 1] if reads_finer else 1,
                )
            )
        self.units = nn.ModuleList(units)

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        # x holds in_scales maps, finest first; output j reads input (j + dropped) and its finer
        # neighbour (j + dropped - 1) when it has one.
        out = []
        for j, unit in enumerate(self.units):
            i = j + self.dropped
            out.append(unit(x[i], x[i - 1] if (j > 0 or self.dropped > 0) else None))
        return out


class Transition(nn.Module):
    """1x1 conv per scale compressing channels (``reduction``), applied after scale pruning."""

    def __init__(self, c_in: int, c_out: int, scales: list[int], gr_factor: list[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            conv_bn_relu(c_in * gr_factor[s], c_out * gr_factor[s], kernel=1) for s in scales
        )

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        return [conv(t) for conv, t in zip(self.convs, x, strict=True)]


class MultiScaleStem(nn.Module):
    """The first layer: one feature map per scale, each from the next finer one (stride 2)."""

    def __init__(self, stem: str, n_channels: int, gr_factor: list[int]) -> None:
        super().__init__()
        first: nn.Module
        if stem == "cifar":
            first = conv_bn_relu(3, n_channels * gr_factor[0], kernel=3)
        else:  # imagenet: 7x7/2 conv then 3x3/2 max-pool, 224 -> 56
            first = nn.Sequential(
                nn.Conv2d(3, n_channels * gr_factor[0], 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(n_channels * gr_factor[0]),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        layers = [first]
        for s in range(1, len(gr_factor)):
            layers.append(
                conv_bn_relu(n_channels * gr_factor[s - 1], n_channels * gr_factor[s], stride=2)
            )
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for layer in self.layers:
            x = layer(x)
            out.append(x)
        return out


class MSDNet(MultiExitNet):
    """Multi-Scale Dense Network with one exit after each block (see module docstring)."""

    def __init__(
        self,
        num_classes: int = 10,
        *,
        n_blocks: int = 5,
        step: int = 2,
        stepmode: Literal["even", "lin_grow"] = "even",
        base: int = 4,
        n_channels: int = 16,
        growth_rate: int = 6,
        gr_factor: tuple[int, ...] = (1, 2, 4),
        bn_factor: tuple[int, ...] = (1, 2, 4),
        prune: Literal["max", "min"] = "max",
        reduction: float = 0.5,
        bottleneck: bool = True,
        stem: StemKind = "cifar",
        isc: bool = False,
        isc_detach: bool = False,
    ) -> None:
        super().__init__(num_classes, isc=isc, isc_detach=isc_detach)
        if len(gr_factor) != len(bn_factor):
            raise ValueError(f"gr_factor {gr_factor} and bn_factor {bn_factor} differ in length")
        if stepmode not in ("even", "lin_grow"):
            raise ValueError(f"stepmode must be 'even' or 'lin_grow', got {stepmode!r}")
        if prune not in ("max", "min"):
            raise ValueError(f"prune must be 'max' or 'min', got {prune!r}")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        gr, bn = list(gr_factor), list(bn_factor)
        n_scales = len(gr)
        self.steps = [base] + [step if stepmode == "even" else step * i + 1 for i in range(1, n_blocks)]
        n_layers_total = sum(self.steps)

        blocks: list[nn.ModuleList] = []
        heads: list[ExitHead] = []
        c = n_channels
        n_done = 0
        for k, n_layers in enumerate(self.steps):
            modules: list[nn.Module] = [MultiScaleStem(stem, n_channels, gr)] if k == 0 else []
            for _ in range(n_layers):
                n_done += 1
                in_scales, out_scales = _scales_at(prune, n_scales, n_layers_total, n_done)
                modules.append(
                    MSDLayer(c, growth_rate, n_scales, in_scales, out_scales, gr, bn, bottleneck)
                )
                c += growth_rate
                if reduction > 0 and _transition_after(
                    prune, in_scales, out_scales, n_done, n_layers_total
                ):
                    c_out = math.floor(reduction * c)
                    modules.append(
                        Transition(c, c_out, list(range(n_scales - out_scales, n_scales)), gr)
                    )
                    c = c_out
            blocks.append(nn.ModuleList(modules))
            heads.append(self._exit_head(stem, c * gr[-1], num_classes, isc=isc and k > 0))
        self.blocks = nn.ModuleList(blocks)
        self.exits = nn.ModuleList(heads)
        self.apply(_init_weights)

    def _exit_head(self, stem: str, c_in: int, num_classes: int, isc: bool) -> ExitHead:
        # Two strided 3x3 convs then global pooling (official classifiers: 128 wide for CIFAR,
        # c_in wide for ImageNet).
        width = 128 if stem == "cifar" else c_in
        body = nn.Sequential(
            conv_bn_relu(c_in, width, stride=2),
            conv_bn_relu(width, width, stride=2),
            nn.AdaptiveAvgPool2d(1),
        )
        return ExitHead(body, width, num_classes, isc=isc, isc_detach=self.isc_detach)

    def run_block(self, k: int, features: State) -> State:
        modules: list[nn.Module] = list(self.blocks[k].children())
        x: list[Tensor] = list(features)
        if k == 0:  # block 0 starts with the stem, which reads the image
            x = modules[0](features[0])
            modules = modules[1:]
        for module in modules:
            x = module(x)
        return tuple(x)

    def exit_input(self, features: State) -> Tensor:
        return features[-1]

    def stage_blocks(self) -> list[nn.Module]:
        return list(self.blocks)  # block 0 holds the multi-scale stem


def _scales_at(prune: str, n_scales: int, n_total: int, n_done: int) -> tuple[int, int]:
    """Input/output scale counts of the ``n_done``-th layer (1-based) under a pruning rule."""
    if prune == "min":
        # Keep every scale until the last layers, which only need the coarse ones.
        return min(n_scales, n_total - n_done + 2), min(n_scales, n_total - n_done + 1)
    # "max": drop the finest scale every ceil(n_total / n_scales) layers.
    interval = math.ceil(n_total / n_scales)
    in_scales = n_scales - math.floor(max(0, n_done - 2) / interval)
    out_scales = n_scales - math.floor((n_done - 1) / interval)
    return in_scales, out_scales


def _transition_after(prune: str, in_scales: int, out_scales: int, n_done: int, n_total: int) -> bool:
    if prune == "max":
        return in_scales > out_scales
    return n_done in (math.floor(n_total / 3), math.floor(2 * n_total / 3))


def _init_weights(m: nn.Module) -> None:
    # He-normal with fan-out, BN to identity, zero linear biases (as in the official code).
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.zeros_(m.bias)


# -- registered variants -------------------------------------------------------------------------
@register_model()
def msdnet(**kwargs: object) -> MSDNet:
    """MSDNet with every hyperparameter from ``kwargs`` (defaults: a 5-exit CIFAR network)."""
    return MSDNet(**kwargs)  # type: ignore[arg-type]


@register_model()
def msdnet_cifar_anytime(**kwargs: object) -> MSDNet:
    """Official CIFAR anytime-prediction MSDNet: 10 exits, step 2, base 4, 16 stem channels."""
    cfg: dict[str, object] = dict(n_blocks=10, step=2, stepmode="even", base=4, n_channels=16)
    return MSDNet(**{**cfg, **kwargs})  # type: ignore[arg-type]


@register_model()
def msdnet_cifar_budget(**kwargs: object) -> MSDNet:
    """Official CIFAR budgeted-batch MSDNet: 7 exits, lin_grow, step 1, base 1."""
    cfg: dict[str, object] = dict(n_blocks=7, step=1, stepmode="lin_grow", base=1, n_channels=16)
    return MSDNet(**{**cfg, **kwargs})  # type: ignore[arg-type]


@register_model()
def msdnet_imagenet(**kwargs: object) -> MSDNet:
    """Official ImageNet MSDNet: 5 exits, step 4, 4 scales, 7x7 stem (224x224 input)."""
    cfg: dict[str, object] = dict(
        num_classes=1000,
        n_blocks=5,
        step=4,
        stepmode="even",
        base=4,
        n_channels=32,
        growth_rate=16,
        gr_factor=(1, 2, 4, 4),
        bn_factor=(1, 2, 4, 4),
        stem="imagenet",
    )
    return MSDNet(**{**cfg, **kwargs})  # type: ignore[arg-type]
