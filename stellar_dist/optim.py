"""What moves the weights: the optimizer (no decay on biases and norms), the warmup-cosine schedule, and the EMA
of the weights used for evaluation, checkpoints and the model folder."""

from __future__ import annotations

import math

import torch
from torch.optim.swa_utils import AveragedModel


def ema_with_warmup(decay: float):
    """EMA update whose decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates (as TensorFlow's
    ExponentialMovingAverage with num_updates): without it, a short run's EMA is mostly its random init."""

    @torch.no_grad()
    def update(ema_parameters, parameters, num_averaged):
        step = float(num_averaged)
        weight = 1.0 - min(decay, (1.0 + step) / (10.0 + step))
        for ema_parameter, parameter in zip(ema_parameters, parameters):
            ema_parameter.lerp_(parameter, weight)

    return update


@torch.no_grad()
def update_ema(ema: AveragedModel, model: torch.nn.Module) -> None:
    """EMA of the parameters; batch-norm statistics copied as they are. Averaging them too would mix in their
    initial values (variance 1) for thousands of steps, while sky images have tiny pixel variance."""
    ema.update_parameters(model)
    for ema_buffer, buffer in zip(ema.module.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


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
