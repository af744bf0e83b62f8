"""What moves the weights: the optimizer (no decay on biases and norms), the warmup-cosine schedule, and the EMA
of the weights used for evaluation, checkpoints and the model folder."""

from __future__ import annotations

import math

import torch
from torch.optim.swa_utils import AveragedModel


def ema_weight(decay: float, num_averaged: int) -> float:
    """The EMA's step towards the weights: its decay ramps up as min(decay, (1 + n) / (10 + n)) over the first
    updates (TensorFlow's ExponentialMovingAverage with num_updates): without it, a short run's EMA is mostly its
    random init."""
    return 1.0 - min(decay, (1.0 + num_averaged) / (10.0 + num_averaged))


def keep_count_on_host(ema: AveragedModel) -> AveragedModel:
    """The EMA's update counter lives on the host (checkpoints save it as before): reading it on the GPU would
    wait for the device every step."""
    ema.n_averaged = ema.n_averaged.cpu()
    return ema


@torch.no_grad()
def update_ema(ema: AveragedModel, model: torch.nn.Module, decay: float) -> None:
    """EMA of the parameters in a few foreach kernels and no host-device synchronisation (the counter is on the
    host); batch-norm statistics copied as they are. Averaging them too would mix in their initial values
    (variance 1) for thousands of steps, while sky images have tiny pixel variance. Same arithmetic as
    AveragedModel.update_parameters with a lerp, without its reads of a device counter."""
    count = int(ema.n_averaged)
    averaged, current = list(ema.module.parameters()), [parameter.detach() for parameter in model.parameters()]
    if count == 0:
        torch._foreach_copy_(averaged, current)
    else:
        torch._foreach_lerp_(averaged, current, ema_weight(decay, count))
    ema.n_averaged += 1
    torch._foreach_copy_(list(ema.module.buffers()), list(model.buffers()))


def warmup_cosine(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(model: torch.nn.Module, config) -> torch.optim.Optimizer:
    # No weight decay on biases and normalisation parameters (as in the FixMatch reference).
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.train.lr, momentum=config.train.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.train.lr)
