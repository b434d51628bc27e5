"""Data errors, divergence and checkpoint refusals: each one a clear line, found before training."""
import os
import pickle
import subprocess
import sys

import pytest
import torch

from train_helpers import FAST, TINY, load_ckpt, make_folder, run_cli, states_equal, write_corrupt

from vitzoo.cli.data import ShardSampler
from vitzoo.cli.errors import CheckpointError, DataError, DivergenceError
from vitzoo.cli.train import train
from vitzoo.cli.validate import validate


@pytest.fixture
def data(tmp_path):
    return make_folder(tmp_path / 'data')


def _no_training_started(out):
    return not any(os.path.exists(os.path.join(r, 'steps.csv')) for r, _, _ in os.walk(out))


def test_val_missing_class_is_an_error_before_training(tmp_path):
    data = make_folder(tmp_path / 'd', val_classes=[0, 2])
    with pytest.raises(DataError, match=r'lacks 1 class.*class1'):
        train([data, *TINY, *FAST, '--output', str(tmp_path / 'o')])
    assert _no_training_started(tmp_path / 'o')


def test_val_unknown_class_is_an_error_before_training(tmp_path):
    data = make_folder(tmp_path / 'd', val_classes=[0, 1, 2, 3])
    r = run_cli(data, *TINY, *FAST, '--output', str(tmp_path / 'o'))
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert 'class folder(s) that train lacks: class3' in r.stderr.strip().splitlines()[-1]
    assert _no_training_started(tmp_path / 'o')


def test_corrupt_images_are_skipped_and_listed(data, tmp_path):
    bad = [os.path.join(data, 'train', 'class0', 'bad_a.png'), os.path.join(data, 'train', 'class2', 'bad_b.png'),
           os.path.join(data, 'val', 'class1', 'bad_c.png')]
    for p in bad:
        write_corrupt(p)
    result = train([data, *TINY, *FAST, '--output', str(tmp_path / 'o'), '-b', '3'])
    assert result['bad_images'] == sorted(bad)  # every bad file, train and val, named
    assert result['eval']['top1'] >= 0
    listed = open(os.path.join(result['output_dir'], 'bad_images.txt')).read()
    assert all(p in listed for p in bad)


def test_strict_data_stops_on_corrupt_val_before_training(data, tmp_path):
    write_corrupt(os.path.join(data, 'val', 'class1', 'broken.png'))
    r = run_cli(data, *TINY, *FAST, '--output', str(tmp_path / 'o'), '--strict-data')
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert 'broken.png' in r.stderr.strip().splitlines()[-1]
    assert _no_training_started(tmp_path / 'o')


def test_nonfinite_state_never_overwrites_last(data, tmp_path):
    base = [data, *TINY, *FAST, '--output', str(tmp_path), '--experiment', 'nan']
    train(base)
    last = tmp_path / 'nan' / 'last.pth.tar'
    good = load_ckpt(last)['state_dict']
    r = run_cli(*base, '--epochs', '2', '--resume', 'auto', '--opt', 'sgd', '--lr', '1e38', '--no-resume-opt')
    assert r.returncode == 1, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1]
    assert 'Traceback' not in r.stderr and line.startswith('error: non-finite') and 'epoch 1' in line
    assert 'step' in line
    assert states_equal(load_ckpt(last)['state_dict'], good)


def test_skip_nonfinite_goes_on(data, tmp_path, monkeypatch):
    """--skip-nonfinite N skips bad steps (here: every loss of one step made NaN) and finishes."""
    import vitzoo.cli.engine as engine
    calls = {'n': 0}
    real = engine.Trainer.train_one_epoch

    def patched(self, loader, progress):
        fn = self.loss_fn

        class NanOnce(torch.nn.Module):
            def forward(self, out, y):
                calls['n'] += 1
                loss = fn(out, y)
                return loss * float('nan') if calls['n'] == 2 else loss
        self.loss_fn = NanOnce()
        try:
            return real(self, loader, progress)
        finally:
            self.loss_fn = fn
    monkeypatch.setattr(engine.Trainer, 'train_one_epoch', patched)
    with pytest.raises(DivergenceError, match=r'epoch 0 step 1'):
        train([data, *TINY, *FAST, '--output', str(tmp_path / 'a')])
    calls['n'] = 0
    result = train([data, *TINY, *FAST, '--output', str(tmp_path / 'b'), '--skip-nonfinite', '1'])
    assert torch.isfinite(torch.tensor(result['train']['loss']))


class _Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned > /dev/null',))


def test_malicious_checkpoint_is_one_line_everywhere(data, tmp_path):
    evil = tmp_path / 'evil.pth.tar'
    with open(evil, 'wb') as f:
        pickle.dump({'state_dict': _Evil()}, f)
    torch.save({'state_dict': {}, 'x': 1}, tmp_path / 'ok.pth')  # torch format with an evil payload:
    with open(evil, 'wb') as f:
        torch.save({'state_dict': {}, 'evil': _Evil()}, f)
    r = run_cli(data, *TINY, *FAST, '--output', str(tmp_path / 'o'), '--resume', str(evil))
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f'error: refusing to load {evil}')
    # validate without --model: the refusal, not "no --model given"
    with pytest.raises(CheckpointError, match='refusing to load'):
        validate([data, '--checkpoint', str(evil), '--workers', '0', '--no-progress'])
    p = subprocess.run([sys.executable, '-m', 'vitzoo.cli.validate', data, '--checkpoint', str(evil)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1 and 'refusing' in p.stderr


def test_architecture_mismatch_on_resume_is_one_line(data, tmp_path):
    train([data, *TINY, *FAST, '--output', str(tmp_path), '--experiment', 'a'])
    r = run_cli(data, '--model', 'vitzoo_poolformer_s12', '--model-kwargs', 'depths=(1,1,1,1)',
                'dims=(8,16,24,48)', '--img-size', '32', *FAST, '--epochs', '2', '--output', str(tmp_path),
                '--experiment', 'a', '--resume', 'auto')
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert 'does not fit the model' in line and 'shape mismatches' in line


def test_validate_uses_the_weights_that_ranked_best(data, tmp_path):
    result = train([data, *TINY, *FAST, '--output', str(tmp_path), '--model-ema', '--model-ema-decay', '0.5'])
    best = os.path.join(result['output_dir'], 'model_best.pth.tar')
    assert load_ckpt(best)['best_weights'] == 'ema'
    r = validate([data, '--checkpoint', best, '--workers', '0', '--no-progress', '-b', '4'])
    assert r['model'] == 'vitzoo_poolformer_s12' and r['weights'] == 'ema'
    assert r['top1'] == pytest.approx(result['eval']['ema_top1'])
    assert r['loss'] == pytest.approx(result['eval']['ema_loss'], rel=1e-5)
    r2 = validate([data, '--checkpoint', best, '--weights', 'model', '--workers', '0', '--no-progress', '-b', '4'])
    assert r2['weights'] == 'model' and r2['loss'] == pytest.approx(result['eval']['loss'], rel=1e-5)


def test_distributed_eval_counts_every_image_once():
    for n, world in ((9, 2), (10, 4), (3, 4)):
        shards = [list(ShardSampler(n, r, world)) for r in range(world)]
        assert sorted(i for s in shards for i in s) == list(range(n))
        assert [len(ShardSampler(n, r, world)) for r in range(world)] == [len(s) for s in shards]
