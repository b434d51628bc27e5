"""What a recipe does once the trainer's rules are applied: global batch, lr, epochs run, AMP, ...

A recipe states `lr_base` at `lr_base_size`, a per-process batch, accumulation steps, `epochs` and
`cooldown_epochs`; what a run gets depends on the number of processes and on timm's scheduler.
One place computes it, so that `vitzoo-train --print-config`, the trainer's own lr and the test
against the official values (tests/test_recipes_official.py) cannot disagree.
"""
from __future__ import annotations

import argparse
import os
from collections import OrderedDict
from typing import Optional, Sequence

#: the one line a recipe with `token_label: true` (SpectFormer-H's official recipe) is refused with
TOKEN_LABEL_REFUSAL = (
    "argument 'token_label': the official recipe trains with token labelling (LV-ViT: per-image dense "
    "label maps such as label_top5_train_nfnet, --token-label-size 7, the token-label loss with dense weight "
    "0.5), which vitzoo-train does not implement; pass --no-token-label to train with plain cross-entropy "
    "instead (not the official recipe)")


def processes(args: argparse.Namespace) -> tuple[int, str]:
    """(number of processes, where it comes from): the launch's WORLD_SIZE, else the recipe's, else 1."""
    if getattr(args, 'world_size', None) and getattr(args, 'distributed', False):
        return int(args.world_size), 'this run'
    env = os.environ.get('WORLD_SIZE')
    if env and env.isdigit() and int(env) > 0:
        return int(env), 'WORLD_SIZE of this launch'
    if getattr(args, 'recipe_gpus', None):
        return int(args.recipe_gpus), "recipe_gpus: not launched by torchrun"
    return 1, 'one process'


def global_batch(args: argparse.Namespace, world_size: int) -> int:
    """Images per optimizer update: per-process batch x processes x accumulation steps."""
    return args.batch_size * world_size * args.grad_accum_steps


def lr_scale_rule(args: argparse.Namespace) -> str:
    """timm's rule when the recipe names none: sqrt for Ada*/LAMB optimizers, else linear."""
    if args.lr_base_scale:
        return args.lr_base_scale
    return 'sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear'


def scaled_lr(args: argparse.Namespace, batch: int) -> tuple[float, str]:
    """(lr, how it was found): an explicit --lr/`lr` as given, else lr_base scaled to the global batch."""
    if args.lr is not None:
        return float(args.lr), 'lr given (not scaled)'
    rule = lr_scale_rule(args)
    ratio = batch / args.lr_base_size
    lr = args.lr_base * (ratio ** 0.5 if rule == 'sqrt' else ratio)
    return lr, f'lr_base {args.lr_base:g} x ({batch} / {args.lr_base_size}), {rule} scaling'


def epochs_run(args: argparse.Namespace) -> int:
    """Epochs the trainer runs: timm's create_scheduler_v2 answer (epochs + cooldown for cosine/tanh/poly)."""
    import torch
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    _, n = create_scheduler_v2(opt, **scheduler_kwargs(args, decreasing_metric=args.eval_metric == 'loss'),
                               updates_per_epoch=1)
    return int(n)


def _model_cfg(model: str) -> dict:
    """The registered model's pretrained cfg (input size, crop), read without building the model."""
    try:
        import timm
        try:
            import vitzoo  # noqa: F401  (registers the zoo)
        except ImportError:  # pragma: no cover
            pass
        cfg = timm.models.get_pretrained_cfg(model)
        return cfg.to_dict() if cfg is not None else {}
    except Exception:  # an unknown model: the trainer names it later
        return {}


def effective(args: argparse.Namespace, world_size: Optional[int] = None) -> OrderedDict:
    """The key training settings as a run with `world_size` processes (default: see `processes`) gets them."""
    if world_size is None:
        world, world_from = processes(args)
    else:
        world, world_from = world_size, 'given'
    batch = global_batch(args, world)
    lr, lr_how = scaled_lr(args, batch)
    cfg = _model_cfg(args.model)
    if args.input_size:
        size = args.input_size[-1]
    else:
        size = args.img_size or (cfg.get('input_size') or (None, None, None))[-1]
    crop = args.crop_pct if args.crop_pct is not None else cfg.get('crop_pct')
    mixing = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    e = OrderedDict()
    e['model'] = args.model
    e['processes'] = world
    e['processes_from'] = world_from
    e['batch_per_process'] = args.batch_size
    e['grad_accum_steps'] = args.grad_accum_steps
    e['global_batch'] = batch
    e['opt'] = args.opt
    e['lr'] = lr
    e['lr_from'] = lr_how
    e['sched'] = args.sched
    e['sched_on_updates'] = bool(args.sched_on_updates)
    e['epochs'] = args.epochs
    e['cooldown_epochs'] = args.cooldown_epochs
    e['epochs_run'] = epochs_run(args)
    e['warmup_epochs'] = args.warmup_epochs
    e['warmup_lr'] = args.warmup_lr
    e['min_lr'] = args.min_lr
    e['weight_decay'] = args.weight_decay
    e['drop_path'] = args.drop_path
    e['drop'] = args.drop
    e['smoothing'] = args.smoothing
    e['mixup'] = args.mixup if mixing else 0.0
    e['cutmix'] = args.cutmix if mixing else 0.0
    e['mixup_prob'] = args.mixup_prob
    e['aa'] = args.aa
    e['reprob'] = args.reprob
    e['aug_repeats'] = args.aug_repeats if world > 1 else 0
    e['aug_repeats_recipe'] = args.aug_repeats
    e['model_ema'] = bool(args.model_ema)
    e['model_ema_decay'] = args.model_ema_decay if args.model_ema else None
    e['clip_grad'] = args.clip_grad
    e['clip_mode'] = args.clip_mode if args.clip_grad is not None else None
    e['img_size'] = size
    e['crop_pct'] = crop
    e['train_interpolation'] = args.train_interpolation
    e['amp'] = bool(args.amp)
    e['amp_dtype'] = (args.amp_dtype or 'float16 on CUDA, bfloat16 on CPU') if args.amp else None
    e['token_label'] = bool(getattr(args, 'token_label', False))
    return e


def _show(v) -> str:
    if v is None:
        return '-'
    if isinstance(v, bool):
        return 'on' if v else 'off'
    if isinstance(v, float):
        return f'{v:.6g}'
    return str(v)


def format_effective(e: OrderedDict, recipe: str = '', extra: Sequence[tuple[str, str]] = ()) -> str:
    """Lines a user compares with the paper at a glance (`extra`: more (name, value) rows)."""
    accum = f" x {e['grad_accum_steps']} accumulation steps" if e['grad_accum_steps'] > 1 else ''
    sched = f"{e['sched']}, stepped per {'update' if e['sched_on_updates'] else 'epoch'}"
    ra = f"x{e['aug_repeats']}" if e['aug_repeats'] else 'off'
    if e['aug_repeats_recipe'] and not e['aug_repeats']:
        ra = f"off (aug_repeats {e['aug_repeats_recipe']} needs more than one process)"
    rows = [
        ('recipe', recipe or '-'),
        ('model', e['model']),
        ('global batch', f"{e['global_batch']} = {e['batch_per_process']} per process x {e['processes']} "
                         f"processes ({e['processes_from']}){accum}"),
        ('optimizer', e['opt']),
        ('lr', f"{e['lr']:.6g} ({e['lr_from']})"),
        ('schedule', sched),
        ('epochs run', f"{e['epochs_run']} (epochs {e['epochs']}, cooldown {e['cooldown_epochs']})"),
        ('warm-up', f"{e['warmup_epochs']} epochs from {_show(e['warmup_lr'])}"),
        ('min lr', _show(e['min_lr'])),
        ('weight decay', _show(e['weight_decay'])),
        ('drop path', _show(e['drop_path'])),
        ('dropout (drop)', _show(e['drop'])),
        ('label smoothing', _show(e['smoothing'])),
        ('mixup / cutmix / prob', f"{_show(e['mixup'])} / {_show(e['cutmix'])} / {_show(e['mixup_prob'])}"),
        ('auto-augment', _show(e['aa'])),
        ('random erasing', _show(e['reprob'])),
        ('repeated augmentation', ra),
        ('EMA', f"on, decay {_show(e['model_ema_decay'])}" if e['model_ema'] else 'off'),
        ('gradient clipping', f"{_show(e['clip_grad'])} ({e['clip_mode']})" if e['clip_grad'] is not None else 'off'),
        ('input size / eval crop', f"{_show(e['img_size'])} / {_show(e['crop_pct'])}"),
        ('train interpolation', e['train_interpolation']),
        ('AMP', f"on ({e['amp_dtype']})" if e['amp'] else 'off (fp32)'),
        ('token labelling', 'on (refused by the trainer: not implemented)' if e['token_label'] else 'off'),
    ]
    rows += list(extra)
    width = max(len(k) for k, _ in rows)
    return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def recipe_note(args: argparse.Namespace, world_size: int) -> Optional[str]:
    """A log line when this run's process count differs from the one the recipe's global batch is for."""
    if not getattr(args, 'recipe_gpus', None) or args.recipe_gpus == world_size:
        return None
    want = global_batch(args, args.recipe_gpus)
    got = global_batch(args, world_size)
    return (f'the recipe is written for {args.recipe_gpus} processes (global batch {want}); this run has '
            f'{world_size}: global batch {got}, lr scaled by its rule (raise --grad-accum-steps to keep '
            f'the recipe\'s global batch)')


#: official_recipes.csv column -> key of `effective` (the value a run gets)
OFFICIAL_FIELDS = {
    'batch_size': 'batch_per_process', 'grad_accum_steps': 'grad_accum_steps', 'global_batch': 'global_batch',
    'opt': 'opt', 'lr': 'lr', 'sched': 'sched', 'sched_on_updates': 'sched_on_updates', 'epochs': 'epochs',
    'cooldown_epochs': 'cooldown_epochs', 'epochs_run': 'epochs_run', 'warmup_epochs': 'warmup_epochs',
    'warmup_lr': 'warmup_lr', 'min_lr': 'min_lr', 'weight_decay': 'weight_decay', 'drop_path': 'drop_path',
    'drop': 'drop', 'smoothing': 'smoothing', 'mixup': 'mixup', 'cutmix': 'cutmix', 'mixup_prob': 'mixup_prob',
    'aa': 'aa', 'reprob': 'reprob', 'aug_repeats': 'aug_repeats', 'model_ema': 'model_ema',
    'model_ema_decay': 'model_ema_decay', 'clip_grad': 'clip_grad', 'clip_mode': 'clip_mode',
    'img_size': 'img_size', 'crop_pct': 'crop_pct', 'train_interpolation': 'train_interpolation', 'amp': 'amp',
    'token_label': 'token_label'}
_INT = {'gpus', 'batch_size', 'grad_accum_steps', 'global_batch', 'epochs', 'cooldown_epochs', 'epochs_run',
        'warmup_epochs', 'aug_repeats', 'img_size', 'lr_base_size'}
_FLOAT = {'lr', 'lr_base', 'warmup_lr', 'min_lr', 'weight_decay', 'drop_path', 'drop', 'smoothing', 'mixup',
          'cutmix', 'mixup_prob', 'reprob', 'model_ema_decay', 'clip_grad', 'crop_pct'}
_BOOL = {'sched_on_updates', 'model_ema', 'amp', 'token_label'}


def _typed(col: str, text: str):
    if text == '':
        return None
    if col in _INT:
        return int(text)
    if col in _FLOAT:
        return float(text)
    if col in _BOOL:
        if text not in ('true', 'false'):
            raise ValueError(f'official_recipes.csv: {col} expects true or false, got {text!r}')
        return text == 'true'
    return text


def official_table() -> dict[str, dict]:
    """vitzoo/results/official_recipes.csv as {recipe: typed row} (the authors' values and their sources)."""
    import csv
    from importlib.resources import files
    text = files('vitzoo.results').joinpath('official_recipes.csv').read_text()
    return {r['recipe']: {k: _typed(k, v) for k, v in r.items()} for r in csv.DictReader(text.splitlines())}


def differences(e: dict, row: dict) -> dict[str, tuple]:
    """{column: (this run's value, official value)} for the key fields that differ."""
    out = {}
    for col, key in OFFICIAL_FIELDS.items():
        want, got = row[col], e[key]
        if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
            same = abs(got - want) <= 1e-9 * max(abs(want), 1e-30)
        else:
            same = got == want
        if not same:
            out[col] = (got, want)
    return out


def official_rows(e: dict) -> list[tuple[str, str]]:
    """What the official table says about this model, and where this run differs from it."""
    rows = [r for r in official_table().values() if r['model'] == e['model']]
    if not rows:
        return [('official values', '- (no row in vitzoo/results/official_recipes.csv)')]
    row = rows[0]
    import re
    cited = ', '.join(dict.fromkeys(re.findall(r'[\w.-]+/[\w.-]+@[0-9a-f]{7,40}', row['source'] or '')))
    status = row['status'] + (f" ({row['no_official_source']}: {row['rule']})" if row['no_official_source'] else '')
    diff = differences(e, row)
    text = '; '.join(f'{k} {_show(a)} (official {_show(b)})' for k, (a, b) in diff.items()) or 'none'
    return [('official values', f'{status}; {cited}'), ('differs from official', text)]


def print_config(args: argparse.Namespace) -> dict:
    """`--print-config`: print the effective settings to stdout; the dict is what `train` returns."""
    e = effective(args)
    if os.environ.get('RANK', '0') == '0':  # under torchrun: one copy, not one per process
        import sys
        try:
            print(format_effective(e, args.config, official_rows(e)), flush=True)
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            sys.stdout = open(os.devnull, 'w')
    return dict(output_dir=None, effective=dict(e))


def train_sampler(loader):
    """The sampler that orders a train loader's images (through timm's prefetcher and epoch wrappers)."""
    inner = getattr(loader, 'loader', loader)
    sampler = getattr(inner, 'sampler', None)
    if sampler is None and getattr(inner, 'batch_sampler', None) is not None:
        sampler = inner.batch_sampler.sampler
    return getattr(sampler, 'inner', None) or sampler


def repeat_aug_line(args: argparse.Namespace, loader) -> str:
    """The log line of a distributed run with repeated augmentation: which sampler does it, how often."""
    sampler = train_sampler(loader)
    repeats = getattr(sampler, 'num_repeats', None)
    return (f'repeated augmentation: {type(sampler).__name__} x{repeats} over {args.world_size} processes '
            f'({len(sampler)} images per process per epoch)')
