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
    assert text.count('(default:') >= len([a for a in parser._actions if a.option_strings]) - 2


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
