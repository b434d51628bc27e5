"""FSDP2 (torch.distributed.fsdp.fully_shard) for models too large for DDP, and the full
(unsharded) states that checkpoints hold: the model weights of an FSDP checkpoint load anywhere
(validate, a 1-process run); its optimizer state (keyed by parameter name) resumes under FSDP."""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn

from .engine import unwrap


def shard_model(model: nn.Module, args: argparse.Namespace, device: torch.device) -> nn.Module:
    """fully_shard every '*Block' module (innermost first), then the whole model."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    if not args.distributed:
        return model  # one process: nothing to shard, same code path otherwise
    # every rank initialised its own weights (seeded per rank); start all from rank 0's, as DDP does
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            torch.distributed.broadcast(t.data, src=0)
    mesh = init_device_mesh(device.type, (args.world_size,))
    blocks = [m for m in model.modules() if type(m).__name__.endswith('Block') and m is not model]
    for m in reversed(blocks):
        fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _sharded(model: nn.Module, args: argparse.Namespace) -> bool:
    return bool(getattr(args, 'fsdp', False) and getattr(args, 'distributed', False))


def full_model_state(model: nn.Module, args: argparse.Namespace) -> dict:
    """The unsharded model weights (collective under FSDP: every rank calls it)."""
    if not _sharded(model, args):
        return unwrap(model).state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(unwrap(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, args: argparse.Namespace) -> dict:
    """The optimizer state (unsharded, keyed by parameter name under FSDP)."""
    if not _sharded(model, args):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return get_optimizer_state_dict(unwrap(model), optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                              args: argparse.Namespace) -> None:
    if not _sharded(model, args):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(unwrap(model), optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))
