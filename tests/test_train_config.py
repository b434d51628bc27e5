"""Typed recipes, one-line argument errors, help text, run folders, and a recipe for every model."""
import argparse
import os
import subprocess
import sys

import pytest
import timm
import torch

from train_helpers import FAST, TINY, make_folder, run_cli

import vitzoo
from vitzoo.cli.errors import ConfigError
from vitzoo.cli.recipes import all_recipes, resolve_recipe
from vitzoo.cli.train import main as cli_main, train
from vitzoo.cli.train_args import build_parser, load_config, parse_args


@pytest.mark.parametrize('text, key, expected', [
    ('amp: "no"', 'amp', 'true or false'),
    ('model_ema: "false"', 'model_ema', 'true or false'),
    ('epochs: 1.7', 'epochs', 'an integer'),
    ('clip_mode: bogus', 'clip_mode', "one of 'norm'"),
    ('lr: [0.1, 0.2]', 'lr', 'a number'),
    ('scale: 0.5', 'scale', 'a list'),
    ('input_size: [3, 224]', 'input_size', 'a list of 3 values'),
    ('model_kwargs: 5', 'model_kwargs', 'a mapping'),
    ('model: 12', 'model', 'a string'),
    ('pin_mem: 1', 'pin_mem', 'true or false'),
])
def test_yaml_values_are_type_checked(tmp_path, text, key, expected):
    cfg = tmp_path / 'r.yaml'
    cfg.write_text(text + '\n')
    with pytest.raises(ConfigError) as e:
        parse_args(['x', '--config', str(cfg)])
    msg = str(e.value)
    assert f"'{key}'" in msg and expected in msg and '\n' not in msg


def test_yaml_good_values_keep_types(tmp_path):
    cfg = tmp_path / 'r.yaml'
    cfg.write_text('amp: true\nepochs: 7\nlr: 1e-3\nscale: [0.5, 1]\nmodel_kwargs: {depth: 2}\nclip_mode: agc\n')
    a = parse_args(['x', '--config', str(cfg)])
    assert a.amp is True and a.epochs == 7 and a.lr == 1e-3 and a.scale == [0.5, 1.0]
    assert a.model_kwargs == {'depth': 2} and a.clip_mode == 'agc'


@pytest.mark.parametrize('text', ['lr: [1, 2\n', 'a: b: c\n', '- 1\n- 2\n'])
def test_yaml_syntax_or_shape_error_is_one_line_exit_2(tmp_path, capsys, text):
    cfg = tmp_path / 'bad.yaml'
    cfg.write_text(text)
    assert cli_main(['x', '--config', str(cfg)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'bad.yaml' in err and err.startswith('error: ')


def test_argument_errors_are_one_line_exit_2(tmp_path, capsys):
    for argv in (['x', '--epochs', '1.7'], ['x', '--clip-mode', 'bogus'], ['x', '--grad-accum-steps', '0'],
                 ['x', '--resume', 'auto']):
        assert cli_main([*argv, '--output', str(tmp_path)]) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith('error: '), err
    # and from the shell: exit status 2, one line, no traceback
    r = run_cli('x', '--epochs', '1.7')
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and 'Traceback' not in r.stderr


def test_every_option_has_help_and_shows_default():
    parser = build_parser()
    text = parser.format_help()
    for action in parser._actions:
        if action.dest in ('help',):
            continue
        assert action.help and action.help.strip(), f'{action.option_strings or action.dest} has no help'
    # every set default is shown once: by the formatter, or in the help text itself
    shown = [a for a in parser._actions if a.option_strings and a.dest != 'help'
             and a.default not in (None, False, '', argparse.SUPPRESS) and 'default' not in (a.help or '').lower()]
    assert len(shown) > 50 and text.count('(default:') >= len(shown) - 2


def test_run_folders_are_unique_and_reuse_is_refused(tmp_path):
    data = make_folder(tmp_path / 'd', n_train=2, n_val=1)
    argv = [data, *TINY, *FAST, '--output', str(tmp_path / 'o'), '-b', '2']
    dirs = {train(argv)['output_dir'] for _ in range(3)}  # same second
    assert len(dirs) == 3
    train([*argv, '--experiment', 'same'])
    with pytest.raises(ConfigError, match=r'already holds a finished run.*--resume'):
        train([*argv, '--experiment', 'same'])


def test_running_run_folder_is_refused(tmp_path):
    from vitzoo.cli.run_dir import RunLock
    os.makedirs(tmp_path / 'o' / 'busy')
    lock = RunLock(str(tmp_path / 'o' / 'busy'))
    lock.acquire()
    try:
        data = make_folder(tmp_path / 'd', n_train=2, n_val=1)
        with pytest.raises(ConfigError, match='still running'):
            train([data, *TINY, *FAST, '-b', '2', '--output', str(tmp_path / 'o'), '--experiment', 'busy',
                   '--resume', 'auto'])
    finally:
        lock.release()


def test_outputs_of_a_run(tmp_path):
    data = make_folder(tmp_path / 'd', n_train=4, n_val=1)
    r = train([data, *TINY, *FAST, '--output', str(tmp_path), '--grad-accum-steps', '2', '--log-interval', '1'])
    out = r['output_dir']
    for name in ('train.log', 'summary.csv', 'steps.csv', 'args.yaml', 'last.pth.tar', 'model_best.pth.tar',
                 'model_final.safetensors', 'model_best.safetensors', 'curves.png', 'finished'):
        assert os.path.isfile(os.path.join(out, name)), name
    log = open(os.path.join(out, 'train.log')).read()
    assert 'img/s' in log and 'eta' in log
    from safetensors.torch import load_file
    final = load_file(os.path.join(out, 'model_final.safetensors'))
    ckpt = torch.load(os.path.join(out, 'last.pth.tar'), weights_only=True)
    assert all(torch.equal(final[k], v) for k, v in ckpt['state_dict'].items())
    # 3 steps of 4 images, 2 accumulated per update: 2 optimizer updates
    assert ckpt['num_updates'] == 2
    assert 'img_per_s' in open(os.path.join(out, 'summary.csv')).readline()


def test_grad_accum_matches_a_bigger_batch(tmp_path):
    """2 x 2 accumulated equals one batch of 4 (no dropout, no BN in the tiny PoolFormer: GroupNorm)."""
    data = make_folder(tmp_path / 'd', n_train=4, n_val=1)
    common = [data, *TINY, *FAST, '--smoothing', '0', '--no-aug', '--output', str(tmp_path), '--lr', '0.1',
              '--opt', 'sgd']  # Adam would amplify summation-order round-off
    a = train([*common, '-b', '4', '--experiment', 'a', '--hflip', '0'])
    b = train([*common, '-b', '2', '--grad-accum-steps', '2', '--experiment', 'b', '--hflip', '0'])
    sa = torch.load(os.path.join(a['output_dir'], 'last.pth.tar'), weights_only=True)['state_dict']
    sb = torch.load(os.path.join(b['output_dir'], 'last.pth.tar'), weights_only=True)['state_dict']
    assert max((sa[k] - sb[k]).abs().max().item() for k in sa) < 1e-5


def test_every_registered_model_has_a_recipe_that_builds():
    recipes = all_recipes()
    by_model = {}
    for name, path in recipes.items():
        cfg = load_config(path)
        by_model.setdefault(cfg['model'], []).append(name)
        if name.startswith('demo/'):
            continue
        assert name.split('/')[0] != name, f'{path} is not under configs/<family>/'
        with torch.device('meta'):
            model = timm.create_model(cfg['model'], num_classes=1000, drop_path_rate=cfg.get('drop_path'),
                                      **cfg.get('model_kwargs', {}))
        assert model.num_classes == 1000
    missing = [m for m in vitzoo.list_models() if m not in by_model]
    assert not missing, f'models without a recipe: {missing}'


def test_recipes_resolve_by_name():
    assert resolve_recipe('swin_tiny_in1k').endswith(os.path.join('swin', 'swin_tiny_patch4_window7_224.yaml'))
    assert resolve_recipe('swin/swin_tiny_patch4_window7_224') == resolve_recipe('vitzoo_swin_tiny_patch4_window7_224')
    a = parse_args(['x', '--config', 'nat_mini_in1k'])
    assert a.model == 'vitzoo_nat_mini'
    with pytest.raises(ConfigError, match='config not found'):
        resolve_recipe('no_such_recipe')


def test_tensorboard_scalars_of_a_run(tmp_path):
    pytest.importorskip('tensorboard', reason='tensorboard is not installed (the dev extra installs it)')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    data = make_folder(tmp_path / 'd', n_train=4, n_val=1)
    r = train([data, *TINY, *FAST, '--output', str(tmp_path), '--log-interval', '1'])
    acc = EventAccumulator(os.path.join(r['output_dir'], 'tb'))
    acc.Reload()
    tags = set(acc.Tags()['scalars'])
    assert any('loss' in t for t in tags) and any('lr' in t for t in tags), tags
    assert any('top1' in t for t in tags) and any('top5' in t for t in tags), tags
    assert any('img' in t for t in tags), tags


def test_print_config_shows_the_effective_recipe_and_touches_nothing(tmp_path, monkeypatch, capsys):
    """Global batch = batch x processes x accumulation, lr after scaling, epochs incl. cooldown, AMP; exit 0."""
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli_main(['--config', 'caformer/caformer_b36', '--print-config']) == 0
    out = capsys.readouterr().out
    assert '4096 = 128 per process x 8 processes' in out and '4 accumulation steps' in out
    assert 'lr                      0.008 (lr_base 0.008 x (4096 / 4096), linear scaling)' in out
    assert 'epochs run              310 (epochs 300, cooldown 10)' in out and 'off (fp32)' in out
    assert 'official; sail-sg/metaformer@64c534a' in out and 'differs from official   none' in out
    # a DeiT-derived recipe runs exactly `epochs`; a data path that does not exist is not read
    assert cli_main([str(tmp_path / 'no_data'), '--config', 'efficientvit/efficientvit_m0', '--print-config',
                     '--output', str(tmp_path / 'o')]) == 0
    out = capsys.readouterr().out
    assert 'epochs run              300 (epochs 300, cooldown 0)' in out and 'lr                      0.004' in out
    assert 'repeated augmentation   x3' in out
    # a launch with 2 processes and a smaller batch: the lr follows the recipe's linear rule
    monkeypatch.setenv('WORLD_SIZE', '2')
    assert cli_main(['--config', 'efficientvit/efficientvit_m0', '--print-config', '-b', '64']) == 0
    out = capsys.readouterr().out
    assert '128 = 64 per process x 2 processes' in out and '0.00025 (lr_base 0.001 x (128 / 512)' in out
    assert 'global_batch 128 (official 2048)' in out and 'lr 0.00025 (official 0.004)' in out
    assert os.listdir(tmp_path) == [], 'print-config created files'


def test_token_label_recipe_is_refused_in_one_line(tmp_path, capsys):
    data = make_folder(tmp_path / 'd', n_train=2, n_val=1)
    assert cli_main([data, '--config', 'spectformer/spectformer_h_s', '--output', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'token_label'" in err and 'label_top5_train_nfnet' in err
    assert '--no-token-label' in err and not (tmp_path / 'o').exists()
    args = parse_args([data, '--config', 'spectformer/spectformer_h_s', '--no-token-label'])
    assert args.token_label is False and args.mixup == 0.0 and args.train_interpolation == 'random'


def test_recipe_note_when_the_process_count_differs():
    from vitzoo.cli.effective_config import recipe_note
    args = parse_args(['--config', 'poolformer/poolformerv2_s12'])
    assert recipe_note(args, 8) is None
    note = recipe_note(args, 1)
    assert 'written for 8 processes (global batch 4096)' in note and 'global batch 512' in note


def test_repeated_augmentation_uses_timm_sampler_under_ddp(tmp_path):
    """--aug-repeats in a distributed run: timm's RepeatAugSampler (each image 3 times, spread over ranks)."""
    import torch.distributed as dist
    from timm.data.distributed_sampler import RepeatAugSampler
    from vitzoo.cli.effective_config import train_sampler
    from vitzoo.cli.train import build_loaders, create_datasets
    data = make_folder(tmp_path / 'd', n_train=4, n_val=1)
    args = parse_args([data, *TINY, *FAST, '--aug-repeats', '3'])
    args.distributed, args.rank, args.world_size, args.prefetcher = True, 0, 1, False
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "pg"}', rank=0, world_size=1)
    try:
        tr, ev = create_datasets(args)
        cfg = dict(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation='bicubic', crop_pct=1.0)
        loader, *_ = build_loaders(args, cfg, tr, ev, 3, torch.device('cpu'))
        sampler = train_sampler(loader)  # through timm's prefetcher and an epoch-seeding wrapper
        assert isinstance(sampler, RepeatAugSampler) and sampler.num_repeats == 3
        sampler.set_epoch(1)
        idx = list(iter(sampler))
        assert len(idx) == len(tr) and len(set(idx)) < len(idx), 'images repeat within the epoch'
    finally:
        dist.destroy_process_group()


def test_one_process_run_says_repeated_augmentation_is_off(tmp_path, caplog):
    data = make_folder(tmp_path / 'd', n_train=2, n_val=1)
    with caplog.at_level('WARNING', logger='train'):
        train([data, *TINY, *FAST, '--aug-repeats', '3', '--output', str(tmp_path / 'o')])
    assert any('needs more than one process' in r.getMessage() for r in caplog.records)


def test_schedule_steps_per_update_or_per_epoch(tmp_path):
    """sched_on_updates (Swin, NAT) moves the lr every update; without it the lr holds for the epoch."""
    import csv
    data = make_folder(tmp_path / 'd', n_train=4, n_val=1)
    lrs = {}
    for mode, extra in (('upd', ['--sched-on-updates']), ('ep', [])):
        r = train([data, *TINY, *FAST, '-b', '2', '--epochs', '2', '--warmup-epochs', '1', '--warmup-lr', '1e-5',
                   '--log-interval', '1', '--output', str(tmp_path / 'o'), '--experiment', mode, *extra])
        with open(os.path.join(r['output_dir'], 'steps.csv')) as f:
            lrs[mode] = [float(row['lr']) for row in csv.DictReader(f) if int(row['epoch']) == 0]
    assert len(lrs['upd']) >= 3 and len(set(lrs['upd'])) == len(lrs['upd']), lrs
    assert len(set(lrs['ep'])) == 1, lrs


def test_fp32_recipe_runs_without_autocast_or_scaler():
    from vitzoo.cli.engine import make_amp
    args = parse_args(['--config', 'efficientvit/efficientvit_m0'])
    assert args.amp is False
    autocast, scaler = make_amp(args, torch.device('cpu'))
    assert scaler is None
    with autocast():
        assert not torch.is_autocast_enabled('cpu')


@pytest.mark.slow
def test_repeated_augmentation_in_a_two_process_run(tmp_path):
    """torchrun, 2 CPU processes (gloo), --aug-repeats 3: the run trains on RepeatAugSampler's share per rank."""
    import csv
    import shutil
    from train_helpers import ROOT
    data = make_folder(tmp_path / 'd', n_train=4, n_val=1)  # 12 train images
    torchrun = shutil.which('torchrun', path=os.path.dirname(sys.executable)) or 'torchrun'
    p = subprocess.run([torchrun, '--standalone', '--nproc_per_node', '2', os.path.join(ROOT, 'train_imagenet.py'),
                        data, *TINY, *FAST, '-b', '2', '--aug-repeats', '3', '--log-interval', '1',
                        '--output', str(tmp_path / 'o'), '--experiment', 'ra'],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert p.returncode == 0, p.stderr[-3000:]
    log = open(tmp_path / 'o' / 'ra' / 'train.log').read()
    assert 'needs more than one process' not in log
    assert 'repeated augmentation: RepeatAugSampler x3 over 2 processes (6 images per process per epoch)' in log
    with open(tmp_path / 'o' / 'ra' / 'steps.csv') as f:
        steps = [r for r in csv.DictReader(f) if int(r['epoch']) == 0]
    # RepeatAugSampler: 12 images x 3 repeats, each rank takes ceil(12 / 2) = 6 per epoch -> 3 steps of 2
    assert len(steps) == 3, steps
