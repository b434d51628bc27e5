"""Knowledge distillation from a frozen teacher (DeiT's recipe): hard, soft or none.

The distilled EfficientViT / SHViT heads (`distillation=True`) return (class, distillation)
logits in training once `set_distilled_training(True)` is called: the class logits learn the
labels, the distillation logits learn the teacher. A student with one output distils through it.
"""
from __future__ import annotations

import argparse
from typing import Optional

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoints as ckpts
from .errors import ConfigError


class DistillationLoss(nn.Module):
    """(1 - alpha) * base(class logits, labels) + alpha * distill(distillation logits, teacher)."""

    needs_inputs = True  # the trainer passes the batch: the teacher sees the same images

    def __init__(self, base: nn.Module, teacher: nn.Module, kind: str = 'hard', alpha: float = 0.5,
                 tau: float = 1.0) -> None:
        super().__init__()
        if kind not in ('hard', 'soft', 'none'):
            raise ConfigError(f"argument 'distill_type' expects hard, soft or none, got {kind!r}")
        self.base, self.kind, self.alpha, self.tau = base, kind, alpha, tau
        self.teacher = teacher

    def forward(self, outputs, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        cls, dist = outputs if isinstance(outputs, (tuple, list)) else (outputs, outputs)
        base = self.base(cls, labels)
        if self.kind == 'none':
            return base
        with torch.no_grad():
            t = self.teacher(inputs)
            if isinstance(t, (tuple, list)):
                t = (t[0] + t[1]) / 2
        if self.kind == 'soft':
            tau = self.tau
            d = F.kl_div(F.log_softmax(dist / tau, dim=1), F.log_softmax(t.float() / tau, dim=1),
                         reduction='sum', log_target=True) * (tau * tau) / dist.numel()
        else:
            d = F.cross_entropy(dist, t.argmax(dim=1))
        return base * (1 - self.alpha) + d * self.alpha

    def train(self, mode: bool = True) -> 'DistillationLoss':
        super().train(mode)
        self.teacher.eval()  # the teacher never leaves eval mode (BN statistics, dropout)
        return self


def create_teacher(args: argparse.Namespace, num_classes: int, device: torch.device) -> nn.Module:
    """The frozen teacher: `--distill-teacher` with `--distill-checkpoint` weights (weights_only)."""
    if not timm.is_model(args.distill_teacher):
        raise ConfigError(f"unknown teacher model '{args.distill_teacher}' (--distill-teacher)")
    teacher = timm.create_model(args.distill_teacher, num_classes=num_classes)
    if args.distill_checkpoint:
        ckpts.load_weights(teacher, ckpts.model_state(ckpts.load_file(args.distill_checkpoint)),
                           args.distill_checkpoint)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def check_args(args: argparse.Namespace) -> None:
    """A teacher needs its weights and a checkpoint its architecture (checked before any work)."""
    if args.distill_checkpoint and not args.distill_teacher:
        raise ConfigError('argument distill_checkpoint: needs --distill-teacher MODEL (the architecture)')
    if args.distill_teacher and not args.distill_checkpoint:
        raise ConfigError('argument distill_teacher: needs --distill-checkpoint PATH (an untrained teacher '
                          'teaches nothing)')
    if not 0.0 <= args.distill_alpha <= 1.0:
        raise ConfigError(f"argument 'distill_alpha' expects a number in [0, 1], got {args.distill_alpha}")


def wrap_loss(args: argparse.Namespace, model: nn.Module, base: nn.Module, num_classes: int,
              device: torch.device) -> nn.Module:
    """`base`, or the distillation loss around it when distillation is asked for."""
    check_args(args)
    if not args.distill_teacher:
        return base
    teacher = create_teacher(args, num_classes, device)
    if hasattr(model, 'set_distilled_training') and getattr(getattr(model, 'head', None), 'dist', None) is not None:
        model.set_distilled_training(args.distill_type != 'none')
    return DistillationLoss(base, teacher, args.distill_type, args.distill_alpha, args.distill_tau).to(device)


def add_args(g) -> None:
    """The distillation flags (DeiT's names, with a `distill-` prefix)."""
    g.add_argument('--distill-teacher', default='', metavar='MODEL', help='teacher model name (off when empty)')
    g.add_argument('--distill-checkpoint', default='', metavar='PATH', help="the teacher's weights")
    g.add_argument('--distill-type', default='hard', choices=('hard', 'soft', 'none'),
                   help='hard: CE to the teacher argmax (DeiT), soft: KL at --distill-tau, none: labels only')
    g.add_argument('--distill-alpha', type=float, default=0.5, metavar='A', help='weight of the distillation term')
    g.add_argument('--distill-tau', type=float, default=1.0, metavar='T', help='soft distillation temperature')


def student_note(model: nn.Module) -> Optional[str]:
    """A hint when a zoo model has a distillation head option that is off."""
    head = getattr(model, 'head', None)
    if hasattr(model, 'set_distilled_training') and getattr(head, 'dist', None) is None:
        return ('the student has no distillation head: it distils through its class logits '
                '(build it with --model-kwargs distillation=True for the DeiT-style head)')
    return None
