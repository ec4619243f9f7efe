"""The contract every multi-exit architecture meets.

A :class:`MultiExitNet` is a chain of ``num_exits`` *stages*. Stage ``k`` runs block ``k`` on the
carried state and returns the next state plus the logits of exit ``k``:

    stage 0:      (image [N,3,H,W],)                  -> (state_1, logits_0 [N,C])
    stage k > 0:  state_k = (*features, [isc_logits])  -> (state_{k+1}, logits_k [N,C])

``forward(x)`` is literally the loop over stages, so running stages ``0..k`` one after the other
gives exactly what ``forward`` gives at exit ``k``. That is what lets the service stop a sample
early and continue the rest of a batch as a smaller batch (every state tensor has the batch on
dim 0), and what the per-stage ONNX graphs of a model package export.

Gradient Equilibrium (IMTA section 3.1) plugs in at the one place where a stage's features are
shared between its exit and the next block: :meth:`MultiExitNet.set_boundary_hook`. The rescale
function itself lives in ``training/equilibrium.py``; models only expose the seam.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

State = tuple[Tensor, ...]
"""The tensors carried from one stage to the next; each has the batch on dim 0."""

BoundaryHook = Callable[[int, int, State], tuple[State, State]]
"""``hook(stage_index, num_exits, features) -> (features_for_exit, features_for_next_block)``."""


class ExitHead(nn.Module):
    """An exit classifier, optionally with Inline Subnetwork Collaboration (IMTA section 3.2).

    Without ISC: ``logits = linear(body(x))``. With ISC, the final linear layer also reads a
    learned embedding of the previous exit's logits, ``Linear(C -> E) -> BatchNorm1d -> ReLU``,
    concatenated to the pooled feature, so that a later exit refines rather than restarts.

    Args:
        body: maps the exit's input feature map ``[N, c, h, w]`` to a vector ``[N, feature_dim]``.
        feature_dim: width of ``body``'s output.
        num_classes: C.
        isc: read the previous exit's logits (must be False for the first exit).
        isc_embed_dim: E, width of the logits embedding; defaults to ``feature_dim``.
        isc_detach: cut the backward path through the previous exit's logits.
    """

    def __init__(
        self,
        body: nn.Module,
        feature_dim: int,
        num_classes: int,
        *,
        isc: bool = False,
        isc_embed_dim: int | None = None,
        isc_detach: bool = False,
    ) -> None:
        super().__init__()
        self.body = body
        self.isc = isc
        self.isc_detach = isc_detach
        embed_dim = 0
        if isc:
            embed_dim = isc_embed_dim or feature_dim
            self.isc_embed = nn.Sequential(
                nn.Linear(num_classes, embed_dim),
                nn.BatchNorm1d(embed_dim),
                nn.ReLU(inplace=True),
            )
        self.linear = nn.Linear(feature_dim + embed_dim, num_classes)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor, prev_logits: Tensor | None = None) -> Tensor:
        """``x``: ``[N, c, h, w]``; ``prev_logits``: ``[N, C]`` (ISC only). Returns ``[N, C]``."""
        feature = torch.flatten(self.body(x), 1)
        if self.isc:
            if prev_logits is None:
                raise ValueError("an ISC exit head needs the previous exit's logits")
            link = prev_logits.detach() if self.isc_detach else prev_logits
            feature = torch.cat([feature, self.isc_embed(link)], dim=1)
        return self.linear(feature)


class MultiExitNet(nn.Module):
    """Base class of every multi-exit architecture (see the module docstring for the contract).

    Subclasses build ``self.exits`` (one :class:`ExitHead` per stage) and implement
    :meth:`run_block` and :meth:`exit_input`.
    """

    arch_name: str = ""
    arch_kwargs: dict[str, Any]
    exits: nn.ModuleList

    def __init__(self, num_classes: int, *, isc: bool = False, isc_detach: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.isc = isc
        self.isc_detach = isc_detach
        self.arch_kwargs = {}
        self._boundary_hook: BoundaryHook | None = None

    # -- what an architecture implements ---------------------------------------------------------
    def run_block(self, k: int, features: State) -> State:
        """Block ``k``: features after block ``k-1`` (the image for ``k == 0``) -> new features."""
        raise NotImplementedError

    def exit_input(self, features: State) -> Tensor:
        """The feature map exit heads read (MSDNet: the coarsest scale)."""
        raise NotImplementedError

    # -- the contract ----------------------------------------------------------------------------
    @property
    def num_exits(self) -> int:
        return len(self.exits)

    def set_boundary_hook(self, hook: BoundaryHook | None) -> None:
        """Install (or with ``None`` remove) the stage-boundary hook used by Gradient Equilibrium."""
        self._boundary_hook = hook

    @property
    def boundary_hook(self) -> BoundaryHook | None:
        return self._boundary_hook

    def forward_stage(self, k: int, state: State) -> tuple[State, Tensor]:
        """Run stage ``k``.

        Args:
            k: stage index, ``0 <= k < num_exits``.
            state: ``(image,)`` for ``k == 0``; else the state returned by stage ``k - 1``.

        Returns:
            ``(next_state, logits)`` with ``logits`` of shape ``[N, num_classes]``. The last
            stage returns an empty ``next_state``.
        """
        if not 0 <= k < self.num_exits:
            raise IndexError(f"stage {k} out of range for {self.num_exits} exits")
        prev_logits: Tensor | None = None
        features = tuple(state)
        if self.isc and k > 0:
            *rest, prev_logits = features
            features = tuple(rest)
        features = self.run_block(k, features)
        exit_features, next_features = features, features
        if self._boundary_hook is not None:
            exit_features, next_features = self._boundary_hook(k, self.num_exits, features)
        logits = self.exits[k](self.exit_input(exit_features), prev_logits)
        if k == self.num_exits - 1:
            return (), logits
        carried: State = (logits,) if self.isc else ()
        return tuple(next_features) + carried, logits

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x``: ``[N, 3, H, W]`` -> one logits tensor ``[N, num_classes]`` per exit, shallow first."""
        state: State = (x,)
        all_logits: list[Tensor] = []
        for k in range(self.num_exits):
            state, logits = self.forward_stage(k, state)
            all_logits.append(logits)
        return all_logits

    def stage(self, k: int) -> StageModule:
        """Stage ``k`` as a standalone module taking and returning flat tensors (for ONNX export)."""
        return StageModule(self, k)

    def stage_blocks(self) -> list[nn.Module]:
        """The backbone modules :meth:`run_block` runs, one per stage (a stem belongs to stage 0);
        together with ``exits`` they hold every parameter."""
        raise NotImplementedError

    def block_parameters(self) -> list[nn.Parameter]:
        """Parameters of the backbone blocks (everything but the exit heads)."""
        head_ids = {id(p) for p in self.exits.parameters()}
        return [p for p in self.parameters() if id(p) not in head_ids]


class StageModule(nn.Module):
    """``forward(*state) -> (*next_state, logits)``: one stage with flat tensor inputs/outputs."""

    def __init__(self, net: MultiExitNet, k: int) -> None:
        super().__init__()
        self.net = net
        self.k = k

    def forward(self, *state: Tensor) -> tuple[Tensor, ...]:
        next_state, logits = self.net.forward_stage(self.k, tuple(state))
        return (*next_state, logits)
