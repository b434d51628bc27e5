"""train_imagenet.py (vitzoo.cli.train): one epoch end to end, resume, YAML recipes and its error messages.

Runs on a tiny synthetic ImageFolder (3 classes of 32x32 PNGs) with timm's `test_convnext`,
and with a shrunken zoo PoolFormer when the zoo has it.
"""
import argparse
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train_imagenet  # noqa: E402
from train_imagenet import build_parser, load_config, main, parse_args  # noqa: E402

MODEL = ['--model', 'test_convnext', '--img-size', '32']
FAST = ['-b', '4', '--epochs', '1', '--warmup-epochs', '0', '--workers', '0', '--no-progress',
        '--lr', '1e-3', '--threads', '1']


def make_folder(root, classes=3, n_train=6, n_val=3, size=32):
    """A tiny ImageFolder: class k is mostly colour channel k, so it is learnable."""
    rng = np.random.default_rng(0)
    for split, n in (('train', n_train), ('val', n_val)):
        for c in range(classes):
            d = os.path.join(root, split, f'class{c}')
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                a[..., c % 3] += 180
                Image.fromarray(a).save(os.path.join(d, f'{i}.png'))
    return str(root)


@pytest.fixture
def data(tmp_path):
    return make_folder(tmp_path / 'data')


def load_safely(path):
    """A training checkpoint through torch.load(weights_only=True): tensors, plain data, Namespace."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, weights_only=True)


def run(data_dir, out_dir, *extra):
    return main([data_dir, *MODEL, *FAST, '--output', str(out_dir), *extra])


def test_one_epoch_writes_summary_and_checkpoint(data, tmp_path):
    result = run(data, tmp_path / 'out', '--experiment', 'e')
    out = tmp_path / 'out' / 'e'
    assert result['output_dir'] == str(out)
    rows = (out / 'summary.csv').read_text().strip().splitlines()
    assert rows[0].split(',')[:4] == ['epoch', 'train_loss', 'eval_loss', 'eval_top1']
    assert len(rows) == 2 and rows[1].startswith('0,')
    assert 0.0 <= result['eval']['top1'] <= 100.0
    assert (out / 'last.pth.tar').is_file() and (out / 'checkpoint-0.pth.tar').is_file()
    # the checkpoint loads with weights_only=True into a fresh model of the same shape
    model = timm.create_model('test_convnext', num_classes=3)
    timm.models.load_checkpoint(model, str(out / 'last.pth.tar'), weights_only=True)
    # the recipe that ran is saved next to it and parses back
    assert load_config(str(out / 'args.yaml'), build_parser())['model'] == 'test_convnext'


def test_resume_continues_from_next_epoch(data, tmp_path):
    # min-lr > 0: the resumed scheduler keeps the first run's 1-epoch horizon, so epoch 1 runs at min-lr
    run(data, tmp_path / 'out', '--experiment', 'r', '--epochs', '1', '--min-lr', '1e-5')
    last = tmp_path / 'out' / 'r' / 'last.pth.tar'
    before = load_safely(last)['state_dict']
    result = run(data, tmp_path / 'out', '--experiment', 'r', '--epochs', '2', '--min-lr', '1e-5', '--resume', str(last))
    rows = (tmp_path / 'out' / 'r' / 'summary.csv').read_text().strip().splitlines()
    assert [r.split(',')[0] for r in rows[1:]] == ['0', '1']  # epoch 0 not trained again
    after = load_safely(last)
    assert after['epoch'] == 1
    assert any(not torch.equal(before[k], after['state_dict'][k]) for k in before)
    assert 0.0 <= result['eval']['top1'] <= 100.0


def test_mixup_cutmix_ema_amp_train(data, tmp_path):
    """The ImageNet-recipe features run together (bf16 autocast on CPU)."""
    result = run(data, tmp_path / 'out', '--experiment', 'm', '--mixup', '0.8', '--cutmix', '1.0',
                 '--smoothing', '0.1', '--model-ema', '--amp', '--drop-path', '0.1',
                 '--clip-grad', '5.0', '--aa', 'rand-m9-mstd0.5-inc1', '--reprob', '0.25')
    assert 'ema_top1' in result['eval']
    header = (tmp_path / 'out' / 'm' / 'summary.csv').read_text().splitlines()[0]
    assert 'eval_ema_top1' in header


def test_yaml_config_fills_flags_and_cli_wins(tmp_path):
    cfg = tmp_path / 'r.yaml'
    cfg.write_text('model: test_vit\nlr: 1e-3\nepochs: 7\nscale: [0.5, 1]\n'
                   'model_kwargs: {img_size: 32, depth: 2}\nmodel-ema: true\n')
    args = parse_args(['x', '--config', str(cfg), '--epochs', '3'])
    assert args.model == 'test_vit'
    assert args.lr == pytest.approx(1e-3) and isinstance(args.lr, float)  # YAML reads 1e-3 as text
    assert args.scale == [0.5, 1.0]
    assert args.model_kwargs == {'img_size': 32, 'depth': 2}
    assert args.model_ema is True
    assert args.epochs == 3  # the command line wins over the file
    assert args.data_dir == 'x'


def test_unknown_yaml_key_names_key_and_file(tmp_path):
    cfg = tmp_path / 'bad.yaml'
    cfg.write_text('lrr: 0.1\n')
    with pytest.raises(ValueError, match=r"unknown key 'lrr' in .*bad\.yaml.*'lr'"):
        parse_args(['x', '--config', str(cfg)])


def test_bad_yaml_value_names_key(tmp_path):
    cfg = tmp_path / 'bad.yaml'
    cfg.write_text('epochs: many\n')
    with pytest.raises(ValueError, match=r"'epochs'"):
        parse_args(['x', '--config', str(cfg)])


def test_missing_data_dir_names_path(tmp_path):
    missing = tmp_path / 'no_such_dir'
    with pytest.raises(FileNotFoundError, match=str(missing)):
        run(str(missing), tmp_path / 'out')


def test_missing_split_names_it(tmp_path):
    (tmp_path / 'd' / 'train' / 'a').mkdir(parents=True)
    Image.new('RGB', (32, 32)).save(tmp_path / 'd' / 'train' / 'a' / '0.png')
    with pytest.raises(FileNotFoundError, match=r"no 'validation' split.*val"):
        run(str(tmp_path / 'd'), tmp_path / 'out')


def test_empty_split_is_a_clear_error(tmp_path):
    (tmp_path / 'd' / 'train' / 'a').mkdir(parents=True)
    with pytest.raises(ValueError, match=r'Found 0 images .*train'):
        run(str(tmp_path / 'd'), tmp_path / 'out')


def test_unknown_model_is_named(data, tmp_path):
    with pytest.raises(ValueError, match=r"unknown model 'vitzoo_no_such_net'.*vitzoo\.list_models"):
        main([data, '--model', 'vitzoo_no_such_net', *FAST, '--output', str(tmp_path)])


def test_corrupt_image_names_file(data, tmp_path):
    bad = os.path.join(data, 'train', 'class1', 'broken.png')
    with open(bad, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n not really a png')
    with pytest.raises(train_imagenet.CorruptImageError, match=r'broken\.png'):
        run(data, tmp_path / 'out', '-b', '18', '--strict-data')  # one batch holds every image


def test_cli_error_is_one_line(tmp_path):
    """From the shell a user error is a one-line message and exit status 2 (bad input), not a traceback."""
    missing = str(tmp_path / 'nowhere')
    p = subprocess.run([sys.executable, os.path.join(ROOT, 'train_imagenet.py'), missing,
                        '--model', 'test_convnext'], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert f'data directory not found: {missing}' in p.stderr
    assert 'Traceback' not in p.stderr


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(ROOT, 'configs', '*', '*.yaml'))))
def test_recipes_have_only_known_keys(path):
    cfg = load_config(path, build_parser())
    assert cfg['model'].startswith('vitzoo_'), 'recipes train zoo models'


def test_imagenet_recipes_exist():
    names = {os.path.relpath(p, os.path.join(ROOT, 'configs'))
             for p in glob.glob(os.path.join(ROOT, 'configs', '*', '*.yaml'))}
    assert {'demo/digits.yaml', 'swin/swin_tiny_patch4_window7_224.yaml', 'poolformer/poolformer_s12.yaml',
            'nat/nat_mini.yaml', 'evit/evit_deit_small_patch16_224.yaml'} <= names


def test_zoo_model_trains_one_epoch(data, tmp_path):
    pytest.importorskip('vitzoo')
    if not timm.is_model('vitzoo_poolformer_s12'):
        pytest.skip('vitzoo_poolformer_s12 is not registered yet')
    result = main([data, '--model', 'vitzoo_poolformer_s12', '--img-size', '32', '--model-kwargs',
                   'depths=(1,1,1,1)', 'dims=(8,16,24,32)', *FAST, '--output', str(tmp_path)])
    assert 0.0 <= result['eval']['top1'] <= 100.0
    assert np.isfinite(result['train']['loss'])


def test_lr_scales_with_global_batch(data, tmp_path, monkeypatch):
    seen = {}
    import vitzoo.cli.train as cli_train
    real = cli_train.create_optimizer_v2

    def spy(model, **kw):
        seen.update(kw)
        return real(model, **kw)
    monkeypatch.setattr(cli_train, 'create_optimizer_v2', spy)
    argv = [a for a in FAST if a not in ('--lr', '1e-3')]
    main([data, *MODEL, *argv, '--output', str(tmp_path), '--lr-base', '1e-3', '--lr-base-size', '8'])
    assert seen['lr'] == pytest.approx(1e-3 * 4 / 8)


def test_keep_rate_warmup_schedule():
    pytest.importorskip('vitzoo.layers.token_reorg')

    class Stub(torch.nn.Module):
        target_keep_rate = 0.7

        def __init__(self):
            super().__init__()
            self.rates = []

        def set_keep_rate(self, rate):
            self.rates.append(rate)

    stub = Stub()
    set_rate = train_imagenet.keep_rate_schedule(stub, 10, 110)
    for epoch in (5.0, 60.0, 200.0, None):
        set_rate(epoch)
    assert stub.rates[0] == 1.0 and 0.7 < stub.rates[1] < 1.0 and stub.rates[2] == pytest.approx(0.7)
    assert stub.rates[3] is None  # back to the model's target for evaluation
    with pytest.raises(ValueError, match='set_keep_rate'):
        train_imagenet.keep_rate_schedule(torch.nn.Linear(2, 2), 10, 110)


def test_evit_trains_with_keep_rate_warmup(data, tmp_path):
    name = 'vitzoo_evit_deit_tiny_patch16_224'
    if not timm.is_model(name):
        pytest.skip(f'{name} is not registered yet')
    result = main([data, '--model', name, '--model-kwargs', 'img_size=32', 'patch_size=8', 'depth=4',
                   'token_reorg_locs=(1,2)',
                   '--img-size', '32', '--keep-rate-warmup', '0', '1', *FAST, '--output', str(tmp_path)])
    assert np.isfinite(result['train']['loss'])
