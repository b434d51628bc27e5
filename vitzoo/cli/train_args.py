"""Training flags and typed YAML recipes.

Flags follow timm's train.py; a recipe's keys are the argparse dests. A YAML value is checked
against its option the way a user would expect, not coerced: booleans are only true/false, an
int option rejects 1.7, `choices` hold, list options take lists and scalar ones scalars, and
mapping options (model_kwargs) take mappings. Every mistake is one ConfigError line naming the
key and the expected type.
"""
from __future__ import annotations

import argparse
import difflib
import os
from typing import Any, Optional, Sequence

import yaml
from timm.utils import ParseKwargs

from . import distill
from .errors import ConfigError
from .help_format import DefaultsOnceFormatter
from .recipes import resolve_recipe
from .timm_dialect import add_unsupported, at_timm_default, check_unsupported, rename_keys


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument raises ConfigError (one line, exit 2) instead of usage + exit."""

    def error(self, message: str):  # noqa: D102
        raise ConfigError(f'argument error: {message} (see --help)')


def _h(text: str) -> str:
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every option has help text and shows its default."""
    p = OneLineParser(
        prog='vitzoo-train',
        description='Train a timm / vitzoo model on an ImageFolder dataset',
        formatter_class=DefaultsOnceFormatter)
    p.add_argument('-c', '--config', default='', metavar='RECIPE',
                   help='YAML recipe: a file, or a name inside the package such as swin_tiny_in1k, '
                        'swin/swin_tiny_patch4_window7_224 or a model name; its keys fill the defaults')
    p.add_argument('--print-config', action='store_true',
                   help='print the effective settings (global batch = batch x processes x accumulation, lr after '
                        'scaling, epochs run incl. cooldown, AMP, ...) and exit 0; reads no data, writes nothing')

    g = p.add_argument_group('Dataset')
    g.add_argument('data', nargs='?', default=None, metavar='DIR', help='data root (alternative to --data-dir)')
    g.add_argument('--data-dir', default=None, metavar='DIR', help='data root with train/ and val/ folders')
    g.add_argument('--dataset', default='', metavar='NAME',
                   help="'' for an image folder, else a timm dataset name (e.g. torch/cifar10)")
    g.add_argument('--train-split', default='train', metavar='NAME', help="train split folder ('train' finds 'training')")
    g.add_argument('--val-split', default='validation', metavar='NAME',
                   help="'validation' also finds a 'val' folder; '' to skip evaluation")
    g.add_argument('--dataset-download', action='store_true',
                   help='let a timm dataset (torch/..., tfds/...) download itself')
    g.add_argument('--class-map', default='', metavar='FILE', help='class-to-index map file (default: the train folders, sorted)')
    g.add_argument('--input-img-mode', default=None, metavar='MODE', help="PIL mode images are converted to (default 'RGB')")
    g.add_argument('--strict-data', action='store_true',
                   help='stop at the first corrupt or unreadable image instead of skipping and listing it')

    g = p.add_argument_group('Model')
    g.add_argument('--model', default='vitzoo_poolformer_s12', metavar='NAME', help='registered model name')
    g.add_argument('--pretrained', action='store_true', help='start from pretrained weights')
    g.add_argument('--pretrained-path', default=None, metavar='PATH',
                   help='load pretrained weights from this file instead of the hub')
    g.add_argument('--initial-checkpoint', default='', metavar='PATH',
                   help='load model weights (weights_only) before training')
    g.add_argument('--resume', default='', metavar='PATH|auto',
                   help="continue a run exactly: a checkpoint file, a run folder, or 'auto' (the newest "
                        "valid checkpoint in --output/--experiment)")
    g.add_argument('--no-resume-opt', action='store_true', help='do not restore the optimizer when resuming')
    g.add_argument('--num-classes', type=int, default=None, metavar='N',
                   help='classes; default: the number of class folders in the train split')
    g.add_argument('--gp', default=None, metavar='POOL', help='global pool type (default: the model\'s)')
    g.add_argument('--img-size', type=int, default=None, metavar='N', help='image size (default: the model\'s)')
    g.add_argument('--in-chans', type=int, default=None, metavar='N', help='input channels (default: the model\'s)')
    g.add_argument('--input-size', default=None, type=int, nargs=3, metavar='N',
                   help='C H W, overrides --img-size')
    g.add_argument('--crop-pct', default=None, type=float, metavar='PCT', help='eval center-crop fraction')
    g.add_argument('--mean', default=None, type=float, nargs='+', metavar='MEAN', help='normalisation mean per channel')
    g.add_argument('--std', default=None, type=float, nargs='+', metavar='STD', help='normalisation std per channel')
    g.add_argument('--interpolation', default='', metavar='NAME', help='eval resize interpolation (default: the model\'s)')
    g.add_argument('-b', '--batch-size', type=int, default=128, metavar='N', help='batch per process (per micro-step)')
    g.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N',
                   help='eval batch per process (default: --batch-size)')
    g.add_argument('--channels-last', action='store_true', help='channels-last memory format')
    g.add_argument('--grad-checkpointing', action='store_true', help='activation checkpointing (saves memory)')
    g.add_argument('--torchcompile', nargs='?', const='inductor', default=None, metavar='BACKEND',
                   help='torch.compile the model with this backend')
    g.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                   metavar='KEY=VALUE', help='extra create_model kwargs')
    g.add_argument('--drop', type=float, default=None, metavar='PCT', help='dropout rate')
    g.add_argument('--drop-path', '--drop-connect', type=float, default=None, metavar='PCT', help='stochastic depth rate')
    g.add_argument('--drop-block', type=float, default=None, metavar='PCT', help='DropBlock rate (models that take it)')
    g.add_argument('--bn-momentum', type=float, default=None, metavar='M', help='BatchNorm momentum override (models that take it)')
    g.add_argument('--bn-eps', type=float, default=None, metavar='EPS', help='BatchNorm epsilon override (models that take it)')
    g.add_argument('--head-init-scale', type=float, default=None, metavar='F', help='scale the classifier init by F')
    g.add_argument('--head-init-bias', type=float, default=None, metavar='B', help='classifier bias init value')
    g.add_argument('--fast-norm', action='store_true', help="timm's fast-norm (low-precision LayerNorm/GroupNorm paths)")
    g.add_argument('--sync-bn', action='store_true',
                   help='SyncBatchNorm across DDP processes (a no-op, noted, on one process; refused with --fsdp)')

    g = p.add_argument_group('Optimizer')
    g.add_argument('--opt', default='sgd', metavar='NAME', help='timm optimizer name')
    g.add_argument('--opt-eps', default=None, type=float, metavar='EPS', help="optimizer epsilon (default: the optimizer's)")
    g.add_argument('--opt-betas', default=None, type=float, nargs='+', metavar='BETA', help="optimizer betas (default: the optimizer's)")
    g.add_argument('--momentum', type=float, default=0.9, metavar='M', help='SGD momentum')
    g.add_argument('--weight-decay', type=float, default=2e-5, metavar='WD', help='weight decay')
    g.add_argument('--clip-grad', type=float, default=None, metavar='NORM', help='gradient clipping threshold (off by default)')
    g.add_argument('--clip-mode', default='norm', choices=('norm', 'value', 'agc'), help='gradient clipping mode')
    g.add_argument('--layer-decay', type=float, default=None, metavar='RATE', help='layer-wise lr decay (off by default)')
    g.add_argument('--layer-decay-min-scale', type=float, default=None, metavar='F', help='floor of the layer-wise lr scale')
    g.add_argument('--layer-decay-no-opt-scale', type=float, default=None, metavar='F',
                   help='layers whose layer-decay scale is below F are frozen')
    g.add_argument('--opt-foreach', action='store_true', default=None, help="optimizer's foreach implementation")
    g.add_argument('--opt-kwargs', '--opt-args', dest='opt_args', nargs='*', default={}, action=ParseKwargs,
                   metavar='KEY=VALUE', help='extra optimizer kwargs')
    g.add_argument('--grad-accum-steps', type=int, default=1, metavar='N',
                   help='micro-batches accumulated per optimizer update (lr scales with batch x N)')
    g.add_argument('--recipe-gpus', type=int, default=None, metavar='N',
                   help="processes the recipe's global batch is written for (its torchrun command); "
                        '--print-config assumes N when not launched by torchrun, a run with another count logs it')

    g = p.add_argument_group('Learning rate schedule')
    g.add_argument('--sched', default='cosine', metavar='NAME', help='timm scheduler name')
    g.add_argument('--sched-on-updates', action='store_true', help='step the schedule per update')
    g.add_argument('--lr', type=float, default=None, metavar='LR',
                   help='learning rate; default: lr_base * global_batch / lr_base_size')
    g.add_argument('--lr-base', type=float, default=0.1, metavar='LR', help='lr at --lr-base-size')
    g.add_argument('--lr-base-size', type=int, default=256, metavar='N', help='global batch the base lr is for')
    g.add_argument('--lr-base-scale', default='', choices=('', 'linear', 'sqrt'),
                   help="lr scaling rule ('': sqrt for Ada*/LAMB optimizers, else linear)")
    g.add_argument('--lr-noise', type=float, nargs='+', default=None, metavar='PCT', help='lr noise on/off epoch fractions')
    g.add_argument('--lr-noise-pct', type=float, default=0.67, metavar='PCT', help='lr noise limit')
    g.add_argument('--lr-noise-std', type=float, default=1.0, metavar='STD', help='lr noise std-dev')
    g.add_argument('--lr-cycle-mul', type=float, default=1.0, metavar='MULT', help='cycle length multiplier')
    g.add_argument('--lr-cycle-decay', type=float, default=0.5, metavar='MULT', help='lr decay per cycle')
    g.add_argument('--lr-cycle-limit', type=int, default=1, metavar='N', help='cycles (restarts when > 1)')
    g.add_argument('--lr-k-decay', type=float, default=1.0, metavar='K', help='k-decay of cosine/poly schedules')
    g.add_argument('--warmup-lr', type=float, default=1e-5, metavar='LR', help='lr at the start of warm-up')
    g.add_argument('--min-lr', type=float, default=0., metavar='LR', help='lr floor of the schedule')
    g.add_argument('--epochs', type=int, default=300, metavar='N', help='epochs (cooldown comes on top)')
    g.add_argument('--start-epoch', type=int, default=None, metavar='N', help='override the start epoch (default: 0 or the resumed one)')
    g.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+', metavar='N', help='multistep milestones')
    g.add_argument('--decay-epochs', type=float, default=90, metavar='N', help='step schedule period')
    g.add_argument('--warmup-epochs', type=int, default=5, metavar='N', help='warm-up epochs')
    g.add_argument('--warmup-prefix', action='store_true', help='warm-up is not part of the decay')
    g.add_argument('--cooldown-epochs', type=int, default=0, metavar='N', help='epochs at min lr after the schedule')
    g.add_argument('--patience-epochs', type=int, default=10, metavar='N', help='plateau patience')
    g.add_argument('--decay-rate', '--dr', type=float, default=0.1, metavar='RATE', help='step/plateau decay factor')

    g = p.add_argument_group('Augmentation and regularization')
    g.add_argument('--no-aug', action='store_true', help='no train augmentation')
    g.add_argument('--scale', default=[0.08, 1.0], type=float, nargs='+', metavar='PCT', help='random-resized-crop area range')
    g.add_argument('--ratio', default=[3. / 4., 4. / 3.], type=float, nargs='+', metavar='RATIO', help='random-resized-crop aspect range')
    g.add_argument('--hflip', type=float, default=0.5, metavar='P', help='horizontal flip probability')
    g.add_argument('--vflip', type=float, default=0., metavar='P', help='vertical flip probability')
    g.add_argument('--color-jitter', type=float, default=0.4, metavar='F', help='colour jitter strength')
    g.add_argument('--aa', default=None, metavar='NAME', help='AutoAugment policy, e.g. rand-m9-mstd0.5-inc1 (off by default)')
    g.add_argument('--aug-repeats', type=int, default=0, metavar='N',
                   help='repeated augmentation count (distributed runs only)')
    g.add_argument('--reprob', type=float, default=0., metavar='P', help='random erase probability')
    g.add_argument('--remode', default='pixel', metavar='MODE', help='random erase fill mode')
    g.add_argument('--recount', type=int, default=1, metavar='N', help='random erase count')
    g.add_argument('--mixup', type=float, default=0., metavar='ALPHA', help='mixup alpha (0: off)')
    g.add_argument('--cutmix', type=float, default=0., metavar='ALPHA', help='cutmix alpha (0: off)')
    g.add_argument('--cutmix-minmax', type=float, nargs='+', default=None, metavar='F', help='cutmix min/max ratio (off by default)')
    g.add_argument('--mixup-prob', type=float, default=1.0, metavar='P', help='probability of mixup or cutmix per batch')
    g.add_argument('--mixup-switch-prob', type=float, default=0.5, metavar='P', help='probability of cutmix when both are on')
    g.add_argument('--mixup-mode', default='batch', choices=('batch', 'pair', 'elem'), help='mixup granularity')
    g.add_argument('--mixup-off-epoch', type=int, default=0, metavar='N', help='turn mixup off from this epoch (0: never)')
    g.add_argument('--smoothing', type=float, default=0.1, metavar='F', help='label smoothing')
    g.add_argument('--bce-loss', action='store_true', help='binary cross-entropy loss (also with mixup/cutmix)')
    g.add_argument('--bce-target-thresh', type=float, default=None, metavar='T',
                   help='binarise soft BCE targets at T (off by default)')
    g.add_argument('--train-interpolation', default='random', metavar='NAME', help='train resize interpolation')
    g.add_argument('--token-label', action=argparse.BooleanOptionalAction, default=False,
                   help='token labelling (LV-ViT dense targets), as in the official SpectFormer-H recipe: not '
                        'implemented, a run with it on is refused; --no-token-label trains with plain targets')
    g.add_argument('--keep-rate-warmup', type=float, nargs=2, default=None, metavar=('START', 'END'),
                   help="EViT-style models (set_keep_rate): keep all tokens until epoch START, then "
                        "cosine down to the model's keep rate at END (official: 10 110)")

    distill.add_args(p.add_argument_group('Knowledge distillation (DeiT)'))

    g = p.add_argument_group('EMA')
    g.add_argument('--model-ema', action='store_true', help='keep an EMA of the weights (evaluated too)')
    g.add_argument('--model-ema-decay', type=float, default=0.9998, metavar='D', help='EMA decay')
    g.add_argument('--model-ema-force-cpu', action='store_true', help='keep the EMA on the CPU')
    g.add_argument('--model-ema-warmup', action='store_true', help='EMA decay warm-up')

    g = p.add_argument_group('Runtime, checkpoints and faults')
    g.add_argument('--seed', type=int, default=42, metavar='N', help='run seed (init, sampler order, workers per epoch)')
    g.add_argument('--deterministic', action='store_true', help='torch.use_deterministic_algorithms (bit-exact reruns)')
    g.add_argument('--log-interval', type=int, default=50, metavar='N', help='steps between log lines')
    g.add_argument('--checkpoint-hist', type=int, default=10, metavar='N', help='per-epoch checkpoints kept')
    g.add_argument('--checkpoint-interval', '--recovery-interval', type=int, default=0, metavar='N',
                   help='write a recovery checkpoint every N optimizer updates inside an epoch (0: epoch ends only)')
    g.add_argument('--skip-nonfinite', type=int, default=0, metavar='N',
                   help='skip up to N steps with a non-finite loss instead of stopping at the first')
    g.add_argument('-j', '--workers', type=int, default=4, metavar='N', help='data-loading processes')
    g.add_argument('--amp', action='store_true', help='mixed precision (torch.autocast)')
    g.add_argument('--amp-dtype', default=None, choices=('float16', 'bfloat16'),
                   help='default: float16 on CUDA, bfloat16 on CPU')
    g.add_argument('--device', default=None, metavar='DEV', help="default: 'cuda' when available, else 'cpu'")
    g.add_argument('--threads', type=int, default=None, metavar='N',
                   help='torch CPU threads (default: torch decides); 1 is fastest on a busy machine')
    g.add_argument('--no-prefetcher', action='store_true', help="timm's prefetcher off")
    g.add_argument('--pin-mem', action='store_true', help='pinned host memory for the loaders')
    g.add_argument('--dist-bn', default='reduce', choices=('reduce', 'broadcast', ''), help='BatchNorm stats sync between ranks')
    g.add_argument('--no-ddp-bb', action='store_true', help='DDP without broadcast buffers')
    g.add_argument('--local_rank', '--local-rank', type=int, default=0, metavar='N',
                   help='accepted for old launchers; the rank comes from the environment')
    g.add_argument('--fsdp', action='store_true', help='shard the model with FSDP2 (fully_shard) instead of DDP')
    g.add_argument('--output', default='', metavar='DIR', help="parent of the run folders (''= ./output/train)")
    g.add_argument('--experiment', default='', metavar='NAME',
                   help="run folder name (''= time, model, size and a random suffix)")
    g.add_argument('--eval-metric', default='top1', choices=('top1', 'top5', 'loss'), help='metric that ranks model_best')
    g.add_argument('--progress', action=argparse.BooleanOptionalAction, default=True,
                   help='tqdm progress bar per epoch')
    add_unsupported(p)
    return p


def config_dests(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The options a recipe may set (every dest except help and config)."""
    return {a.dest: a for a in parser._actions if a.dest not in ('help', 'config')}


_BOOL_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)


def _scalar(action: argparse.Action, value: Any) -> tuple[bool, Any, str]:
    """(ok, typed value, expected-type words) for one scalar value of an option."""
    t = action.type
    if t is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return ok, value, 'an integer'
    if t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value), 'a number'
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as text
            try:
                return True, float(value), 'a number'
            except ValueError:
                pass
        return False, value, 'a number'
    return isinstance(value, str), value, 'a string'


def check_value(action: argparse.Action, key: str, value: Any, where: str) -> Any:
    """The typed value of `key`, or ConfigError naming the key and the expected type."""
    def bad(expected: str):
        raise ConfigError(f"{where}: key '{key}' expects {expected}, got {value!r}")

    if isinstance(action, _BOOL_ACTIONS):
        if value is None and action.default is None:
            return None
        if not isinstance(value, bool):
            bad('true or false')
        return value
    if isinstance(action, ParseKwargs):
        if not isinstance(value, dict):
            bad('a mapping (key: value)')
        return dict(value)
    if value is None:
        if action.default is None or action.nargs == '?':
            return None
        bad('a value (null is not allowed here)')
    if action.nargs in ('+', '*') or isinstance(action.nargs, int):
        n = action.nargs
        _, _, words = _scalar(action, None)
        expected = f'a list of {n} values, each {words}' if isinstance(n, int) else f'a list, each item {words}'
        if not isinstance(value, (list, tuple)) or (isinstance(n, int) and len(value) != n) \
                or (n == '+' and not value):
            bad(expected)
        out = []
        for v in value:
            ok, tv, _ = _scalar(action, v)
            if not ok:
                bad(expected)
            out.append(tv)
        return out
    ok, typed, words = _scalar(action, value)
    if not ok:
        bad(words)
    if action.choices is not None and typed not in action.choices:
        bad('one of ' + ', '.join(repr(c) for c in action.choices))
    return typed


def load_config(path: str, parser: Optional[argparse.ArgumentParser] = None) -> dict:
    """Read a YAML recipe (safe_load) and type-check every key against the parser's options."""
    parser = parser or build_parser()
    path = resolve_recipe(path)
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        at = f' at line {mark.line + 1} column {mark.column + 1}' if mark else ''
        problem = getattr(e, 'problem', None) or str(e).splitlines()[0]
        raise ConfigError(f'config {path}: YAML syntax error{at}: {problem}') from None
    cfg = cfg or {}
    if not isinstance(cfg, dict):
        raise ConfigError(f'config {path}: expects a mapping of option names to values, '
                          f'got {type(cfg).__name__}')
    dests = config_dests(parser)
    out = {}
    for key, value in rename_keys(cfg).items():
        if key == 'config' or at_timm_default(key, value):  # timm keys at timm's defaults: nothing to do
            continue
        if key not in dests:
            close = difflib.get_close_matches(key, dests, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ''
            raise ConfigError(f"unknown key '{key}' in {path}{hint}")
        out[key] = check_value(dests[key], key, value, f'config {path}')
    return out


def _check_ranges(args: argparse.Namespace) -> None:
    positive = ('batch_size', 'epochs', 'grad_accum_steps', 'log_interval')
    for key in positive:
        if getattr(args, key) < 1:
            raise ConfigError(f"argument '{key}' expects an integer >= 1, got {getattr(args, key)}")
    for key in ('checkpoint_interval', 'skip_nonfinite', 'workers', 'checkpoint_hist', 'aug_repeats'):
        if getattr(args, key) < 0:
            raise ConfigError(f"argument '{key}' expects an integer >= 0, got {getattr(args, key)}")
    if args.recipe_gpus is not None and args.recipe_gpus < 1:
        raise ConfigError(f"argument 'recipe_gpus' expects an integer >= 1, got {args.recipe_gpus}")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line; a `--config` recipe fills the defaults, explicit flags win."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**load_config(pre.config, parser))
    args = parser.parse_args(argv)
    args.data_dir = args.data_dir or args.data
    check_unsupported(args)
    distill.check_args(args)
    _check_ranges(args)
    if args.token_label and not args.print_config:
        from .effective_config import TOKEN_LABEL_REFUSAL
        raise ConfigError(TOKEN_LABEL_REFUSAL)
    return args


def args_to_dict(args: argparse.Namespace) -> dict:
    """The options of a run as plain data (safe to YAML-dump and to load with weights_only)."""
    dests = config_dests(build_parser())
    out = {}
    for k, v in vars(args).items():
        if k in dests or k in ('num_classes',):
            out[k] = list(v) if isinstance(v, tuple) else v
    return out
