"""ResNet with an exit after each residual stage, built on torchvision's ResNet blocks.

Stage 0 = stem + ``layer1``, stage k = ``layer{k+1}``; each exit reads the stage's output
through a 1x1 conv (to ``head_width`` channels), global average pooling and a linear layer.
The "cifar" stem (3x3 conv, no max-pool) suits 32x32 inputs; "imagenet" is torchvision's.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from models.layers import conv_bn_relu
from models.multi_exit import ExitHead, MultiExitNet, State
from models.registry import register_model


class ResNetExits(MultiExitNet):
    """torchvision ResNet backbone with ``len(layers)`` exits (see module docstring).

    Args:
        block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50+).
        layers: residual blocks per stage, e.g. ``(2, 2, 2, 2)``.
        width: channels of the first stage (64 in torchvision); doubled at each stage.
        stem: ``"cifar"`` or ``"imagenet"``.
        head_width: channels of each exit's 1x1 conv.
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        block: Literal["basic", "bottleneck"] = "basic",
        layers: tuple[int, ...] = (2, 2, 2, 2),
        width: int = 64,
        stem: Literal["cifar", "imagenet"] = "cifar",
        head_width: int = 128,
        isc: bool = False,
        isc_detach: bool = False,
    ) -> None:
        super().__init__(num_classes, isc=isc, isc_detach=isc_detach)
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        if len(layers) != 4:
            raise ValueError(f"layers must have 4 entries (one per stage), got {layers}")
        block_cls = BasicBlock if block == "basic" else Bottleneck
        # Borrow torchvision's construction of the residual stages (and its init).
        backbone = ResNet(block_cls, list(layers), num_classes=num_classes, width_per_group=64)
        if width != 64:
            backbone = _resnet_with_width(block_cls, list(layers), width)
        if stem == "cifar":
            backbone.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
            backbone.maxpool = nn.Identity()
        self.stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool)
        self.stages = nn.ModuleList([backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4])
        heads = []
        for k in range(4):
            c = width * (2**k) * block_cls.expansion
            body = nn.Sequential(conv_bn_relu(c, head_width, kernel=1), nn.AdaptiveAvgPool2d(1))
            heads.append(
                ExitHead(body, head_width, num_classes, isc=isc and k > 0, isc_detach=isc_detach)
            )
        self.exits = nn.ModuleList(heads)

    def run_block(self, k: int, features: State) -> State:
        x = features[0]
        if k == 0:
            x = self.stem(x)
        return (self.stages[k](x),)

    def exit_input(self, features: State) -> Tensor:
        return features[0]

    def stage_blocks(self) -> list[nn.Module]:
        return [nn.Sequential(self.stem, self.stages[0]), *self.stages[1:]]


def _resnet_with_width(
    block_cls: type[BasicBlock] | type[Bottleneck], layers: list[int], width: int
) -> ResNet:
    # torchvision fixes the first stage at 64 channels; rebuild its stages at another width.
    net = ResNet(block_cls, layers)
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.layer1 = net._make_layer(block_cls, width, layers[0])
    net.layer2 = net._make_layer(block_cls, width * 2, layers[1], stride=2)
    net.layer3 = net._make_layer(block_cls, width * 4, layers[2], stride=2)
    net.layer4 = net._make_layer(block_cls, width * 8, layers[3], stride=2)
    return net


@register_model()
def resnet_exits(**kwargs: object) -> ResNetExits:
    """ResNet with exits, every argument from ``kwargs`` (defaults: ResNet-18 layout, CIFAR stem)."""
    return ResNetExits(**kwargs)  # type: ignore[arg-type]


@register_model()
def resnet18_exits(**kwargs: object) -> ResNetExits:
    """ResNet-18 with 4 exits, ImageNet stem (224x224)."""
    cfg: dict[str, object] = dict(num_classes=1000, block="basic", layers=(2, 2, 2, 2), stem="imagenet")
    return ResNetExits(**{**cfg, **kwargs})  # type: ignore[arg-type]


@register_model()
def resnet50_exits(**kwargs: object) -> ResNetExits:
    """ResNet-50 with 4 exits, ImageNet stem (224x224)."""
    cfg: dict[str, object] = dict(
        num_classes=1000, block="bottleneck", layers=(3, 4, 6, 3), stem="imagenet", head_width=256
    )
    return ResNetExits(**{**cfg, **kwargs})  # type: ignore[arg-type]
