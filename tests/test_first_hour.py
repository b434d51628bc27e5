"""A new user's first hour (issue 19): the loader that keeps its workers, and the tools' rough edges.

Each test names the item it covers; each fails on the code before the fix.
"""
import logging
import os
import sys

import pytest
import torch
from train_helpers import FAST, TINY, make_folder, write_corrupt

from vitzoo.cli import profile, recipes
from vitzoo.cli.train import main as train_main, train
from vitzoo.cli.validate import main as validate_main, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def data(tmp_path):
    return make_folder(tmp_path / 'data')


# ---------------------------------------------------------------------------------------------
# 1. the training loader: persistent workers, every random draw a function of (epoch, index)
# ---------------------------------------------------------------------------------------------

class _Noisy(torch.utils.data.Dataset):
    """Each sample is a fresh draw from torch, numpy and python's RNGs (an augmentation's view)."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        import random

        import numpy as np
        return torch.tensor([float(i), torch.rand(()).item(), float(np.random.rand()), random.random()]), i


def test_sampler_skips_and_samples_do_not_depend_on_history():
    from vitzoo.cli.data import EpochSampler, SeededDataset
    s = EpochSampler(12, seed=5)
    s.set_epoch(3)
    full = list(s)
    s.set_epoch(3, start=7)
    assert list(s) == full[7:] and len(s) == 12  # resume: the rest of the same order
    s.set_epoch(4)
    assert [i for _, i in s] != [i for _, i in full]  # a new order per epoch
    ds = SeededDataset(_Noisy(), seed=5, rank=0)
    a = ds[(3, 4)]
    for k in range(5):  # other samples drawn in between leave sample 4 of epoch 3 as it was
        ds[(3, k)]
    assert torch.equal(ds[(3, 4)][0], a[0]) and a[2] == 3
    assert not torch.equal(ds[(4, 4)][0], a[0])


def test_train_loader_keeps_workers_and_resumes_by_skipping():
    from vitzoo.cli.data import EpochSampler, begin_epoch, resumable_train_loader
    base = torch.utils.data.DataLoader(_Noisy(), batch_size=3, num_workers=2, drop_last=True)
    loader = resumable_train_loader(base, seed=1, rank=0)
    assert loader.persistent_workers and isinstance(loader.sampler, EpochSampler)
    assert begin_epoch(loader, 2, 0)
    whole = [x for x, _ in loader]
    assert begin_epoch(loader, 2, 2)  # mid-epoch resume: batches 2 and 3 only, same values
    part = [x for x, _ in loader]
    assert len(part) == 2 and all(torch.equal(a, b) for a, b in zip(whole[2:], part))
    it = loader._iterator
    assert it is not None, 'persistent workers: the iterator (and its workers) stay alive'
    pids_first = {w.pid for w in it._workers}
    begin_epoch(loader, 3, 0)
    list(loader)
    assert {w.pid for w in loader._iterator._workers} == pids_first, 'workers restarted between epochs'


# ---------------------------------------------------------------------------------------------
# 2. vitzoo-validate counts and lists unreadable images like the trainer
# ---------------------------------------------------------------------------------------------

def test_validate_counts_and_lists_unreadable_images(data, capsys):
    bad = os.path.join(data, 'val', 'class1', 'truncated.png')
    write_corrupt(bad)
    r = validate([data, '--model', 'test_convnext', '--img-size', '32', '--workers', '0', '--no-progress'])
    assert r['images'] == 9 and r['bad_images'] == [bad]  # 10 files, 9 scored
    assert validate_main([data, '--model', 'test_convnext', '--img-size', '32', '--workers', '0',
                          '--no-progress']) == 0
    out = capsys.readouterr()
    assert '9 images scored, 1 unreadable skipped' in out.out and bad in out.err


# ---------------------------------------------------------------------------------------------
# 3. --img-size: one meaning in the three tools; a size the model cannot take is one line, early
# ---------------------------------------------------------------------------------------------

def test_img_size_rebuilds_the_model_in_train_and_validate(data, tmp_path):
    r = train([data, '--model', 'test_vit', '--img-size', '64', *FAST, '--output', str(tmp_path / 'o')])
    assert r['eval']['top1'] >= 0  # test_vit is built for 160 px; rebuilt at 64 it trains
    ckpt = os.path.join(r['output_dir'], 'last.pth.tar')
    v = validate([data, '--checkpoint', ckpt, '--workers', '0', '--no-progress'])
    assert v['top1'] == pytest.approx(r['eval']['top1'])


def test_img_size_the_model_cannot_take_is_one_line_before_any_run_folder(data, tmp_path, capsys):
    out = tmp_path / 'o'
    line = 'test_vit cannot take --img-size 30'
    assert train_main([data, '--model', 'test_vit', '--img-size', '30', *FAST, '--output', str(out)]) == 2
    assert line in capsys.readouterr().err and not out.exists()
    assert validate_main([data, '--model', 'test_vit', '--img-size', '30', '--workers', '0']) == 2
    assert line in capsys.readouterr().err
    assert profile.main(['test_vit', '--img-size', '30', '--no-progress']) == 2
    assert line in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# 4. one exit-code convention: 2 for bad input in every tool
# ---------------------------------------------------------------------------------------------

def test_bad_input_exits_2_in_every_tool(data, tmp_path, capsys):
    missing = str(tmp_path / 'nowhere')
    assert train_main([missing, '--model', 'test_convnext', '--output', str(tmp_path / 'o')]) == 2
    assert validate_main([missing, '--model', 'test_convnext']) == 2
    assert validate_main([data, '--checkpoint', str(tmp_path / 'missing.pth')]) == 2
    assert validate_main([data, '--model', 'nope_net']) == 2
    assert profile.main(['nope_net', '--no-progress']) == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err and err.count('error: ') == 5


# ---------------------------------------------------------------------------------------------
# 5. optional outputs degrade to one line naming the extra; output paths checked before work
# ---------------------------------------------------------------------------------------------

def test_profile_without_matplotlib_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # `import matplotlib` raises ImportError
    rc = profile.main(['test_convnext', '--img-size', '32', '--no-train', '--no-flops', '--repeats', '1',
                       '--warmup', '0', '--plot', str(tmp_path / 'p.png'), '--no-progress', '--device', 'cpu'])
    err = capsys.readouterr().err
    assert rc == 0 and "pip install 'vitzoo[plot]'" in err and 'Traceback' not in err
    assert not (tmp_path / 'p.png').exists()


def test_profile_checks_output_paths_before_any_work(tmp_path, capsys):
    rc = profile.main(['test_convnext', '--csv', str(tmp_path / 'no_dir' / 'p.csv'), '--no-progress'])
    out = capsys.readouterr()
    assert rc == 2 and out.out == ''  # nothing profiled
    assert out.err.strip().splitlines() == [f"error: --csv {tmp_path / 'no_dir' / 'p.csv'}: folder "
                                            f"{tmp_path / 'no_dir'} does not exist"]


def test_tensorboard_missing_names_the_extra(tmp_path, monkeypatch, caplog):
    from vitzoo.cli.outputs import Scalars
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)
    with caplog.at_level(logging.INFO, logger='train'):
        s = Scalars(str(tmp_path))
    assert s.writer is None and "pip install 'vitzoo[tensorboard]'" in caplog.text


# ---------------------------------------------------------------------------------------------
# 6. recipes resolve only from vitzoo.configs or an explicit path
# ---------------------------------------------------------------------------------------------

def test_recipe_names_ignore_a_configs_folder_beside_the_package(tmp_path, monkeypatch):
    # an installed copy: site-packages/vitzoo/cli/recipes.py, and another package's site-packages/configs
    site = tmp_path / 'site-packages'
    hijack = site / 'configs' / 'swin' / 'swin_tiny_patch4_window7_224.yaml'
    hijack.parent.mkdir(parents=True)
    hijack.write_text('model: evil\n')
    monkeypatch.setattr(recipes, '__file__', str(site / 'vitzoo' / 'cli' / 'recipes.py'))
    found = recipes.resolve_recipe('swin_tiny_in1k')
    assert found != str(hijack) and 'evil' not in open(found).read()
    assert recipes.resolve_recipe(str(hijack)) == str(hijack)  # an explicit path is taken as given


# ---------------------------------------------------------------------------------------------
# 7. validate's message, bad_images.txt, epoch numbering, train.log, --help, warm-up warning
# ---------------------------------------------------------------------------------------------

def test_validate_without_model_or_checkpoint_says_so(data, capsys):
    assert validate_main([data]) == 2
    err = capsys.readouterr().err.strip()
    assert '--model NAME' in err and '--checkpoint PATH' in err and 'recorded' not in err


def test_bad_images_txt_always_written_and_each_file_once(data, tmp_path):
    clean = train([data, *TINY, *FAST, '--output', str(tmp_path / 'a')])
    assert open(os.path.join(clean['output_dir'], 'bad_images.txt')).read() == ''
    bad = os.path.join(data, 'val', 'class2', 'broken.png')
    write_corrupt(bad)
    r = train([data, *TINY, *FAST, '--epochs', '2', '--output', str(tmp_path / 'b')])
    assert open(os.path.join(r['output_dir'], 'bad_images.txt')).read().splitlines() == [bad]


def test_epochs_numbered_alike_and_train_log_has_model_and_lr(data, tmp_path):
    argv = [data, *TINY, '-b', '4', '--epochs', '2', '--warmup-epochs', '0', '--workers', '0', '--no-progress',
            '--threads', '1', '--output', str(tmp_path), '--experiment', 'e', '--log-interval', '1']
    r = train(argv)  # no --lr: the scaled lr is logged
    log = open(os.path.join(r['output_dir'], 'train.log')).read()
    assert 'Model vitzoo_poolformer_s12' in log and 'lr_base' in log
    import re
    summary = [ln.split(',')[0] for ln in open(os.path.join(r['output_dir'], 'summary.csv')).read().split()[1:]]
    step_epochs = sorted(set(re.findall(r'epoch (\d+) step', log)))
    end_epochs = re.findall(r'epoch (\d+) train_loss', log)
    best = re.findall(r'\*\*\* best .*\(epoch (\d+),', log)
    assert summary == step_epochs == end_epochs == ['0', '1'] and best[0] in summary


def _option_helps(text):
    blocks, cur = [], ''
    for line in text.splitlines():
        if line.startswith('  -') or not line.startswith(' '):  # an option, or a group title
            blocks.append(cur)
            cur = ''
        cur += ' ' + line.strip()
    return blocks + [cur]


def test_help_prints_each_default_once():
    from vitzoo.cli.train import build_parser as train_parser
    from vitzoo.cli.validate import build_parser as validate_parser
    for parser in (train_parser(), validate_parser()):
        doubled = [b for b in _option_helps(parser.format_help()) if b.lower().count('default') > 1]
        assert doubled == [], doubled[:3]


def test_warmup_longer_than_the_run_warns(data, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger='train'):
        train([data, *TINY, *FAST, '--warmup-epochs', '3', '--output', str(tmp_path)])
    assert '--warmup-epochs 3 >= 1 epochs: the lr never reaches' in caplog.text


def test_timm_scripts_remembers_a_versions_missing_scripts(tmp_path, monkeypatch):
    from vitzoo import timm_scripts
    monkeypatch.delenv('VITZOO_TIMM_SCRIPTS', raising=False)
    monkeypatch.setenv('VITZOO_CACHE', str(tmp_path))
    calls = []
    monkeypatch.setattr(timm_scripts, '_from_sdist', lambda version, dest: calls.append(version) or [])
    for _ in range(3):
        with pytest.raises(timm_scripts.ScriptNotFound, match='sdist'):
            timm_scripts.find_script('train.py')
    assert len(calls) == 1, 'the sdist was downloaded again'


def test_onnx_and_plot_extras_exist_and_readme_names_them():
    import tomllib
    with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
        extras = tomllib.load(f)['project']['optional-dependencies']
    assert {'onnx', 'onnxruntime', 'onnxscript'} <= {d.split('>')[0].split('=')[0] for d in extras['onnx']}
    assert any(d.startswith('matplotlib') for d in extras['plot'])
    readme = open(os.path.join(ROOT, 'README.md')).read()
    assert "vitzoo[onnx]" in readme and "vitzoo[plot]" in readme


def test_biformer_urls_are_the_official_repaired_links():
    """rayleizhu/BiFormer@1697bbb ("repair broken links") replaced the matix.li short links with
    OneDrive API links in README.md and models/biformer*.py; STL's file changed too."""
    import timm

    import vitzoo  # noqa: F401
    expect = {'tiny': 'HEOoGkgwgQzEDlM', 'small': 'HDyM-x9KWRBZ832', 'base': 'HI_XPhoadjaNxtO',
              'stl': 'Sf-m7ujkvx9lIQ1'}
    for name, token in expect.items():
        url, file_name = timm.models.get_pretrained_cfg(f'vitzoo_biformer_{name}').url
        assert url == f'https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvCh{token}/root/content', name
        assert file_name == f'biformer_{name}_in1k.pth', 'cached under a real file name, not "content"'
