"""Optimisation in training: the optimizer a recipe names, a moving average of the weights, one step on a batch.

:func:`shoeseg.train.train` runs :func:`train_step` once per iteration, with the optimizer of
:func:`make_optimizer` and, when ``TrainConfig.ema_decay`` asks for it, a :class:`WeightAverage`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from shoeseg.device import autocast
from shoeseg.losses import LOSS_NAMES, detectron2_losses

#: The optimizers :func:`make_optimizer` makes (``TrainConfig.optimizer``).
OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(name: str, params: list[torch.nn.Parameter], *, lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer ``name`` (one of :data:`OPTIMIZERS`, any case) at ``lr``; ``momentum`` is AdamW's first beta."""
    name = name.lower()
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (expected one of {', '.join(OPTIMIZERS)})")


class WeightAverage:
    """An exponential moving average of a model's trainable weights (Polyak averaging).

    After each optimiser step, ``update()`` moves the average towards the current weights by ``1 - d`` where
    ``d = min(decay, (1 + t) / (10 + t))`` at update ``t``: early updates weigh more, so that the average
    does not keep the random initial heads. ``copy_to_model()`` writes the average into the model. Frozen
    parameters and buffers (frozen batch norm) do not change during training and are not averaged.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self._live = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone().float() for p in self._live]

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        for s, p in zip(self.shadow, self._live, strict=True):
            s.lerp_(p.detach().float(), 1.0 - d)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for s, p in zip(self.shadow, self._live, strict=True):
            p.copy_(s.to(p.dtype))


def train_step(
    model: torch.nn.Module,
    images: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
    *,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    params: list[torch.nn.Parameter],
    amp: bool = False,
    clip_grad_norm: float | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """One optimisation step on a batch; returns the detectron2-named losses.

    The loss values are read back once per step (one device synchronisation), after the update. With
    ``reduce`` (several processes: :func:`shoeseg.distributed.mean_over_processes`) they are first averaged
    over the processes, so that all of them report, and stop at, the same values.

    Raises:
        FloatingPointError: a loss is NaN or infinite (in any process, with ``reduce``).
    """
    device = images[0].device
    with autocast(device, enabled=amp):
        loss_dict = model(images, targets)
    total = sum(loss_dict.values())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    if clip_grad_norm:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    stacked = torch.stack([v.detach().float() for v in loss_dict.values()])
    if reduce is not None:
        stacked = reduce(stacked)
    values = stacked.tolist()
    named = dict(zip(loss_dict, values, strict=True))
    if not all(math.isfinite(v) for v in values):
        raise FloatingPointError(f"loss became {sum(values)}: " + ", ".join(
            f"{LOSS_NAMES.get(k, k)}={v}" for k, v in named.items()))
    return detectron2_losses(named)
