"""Exact resume: kill -9 mid-epoch, SIGTERM, crash-safe saves, summary and best metric on resume."""
import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from train_helpers import FAST, TINY, TRAIN_PY, load_ckpt, make_folder, run_cli, states_equal

from vitzoo.cli import checkpoints as ckpts

# every source of randomness on at once: drop path, mixup/cutmix, RandAugment, random erasing, EMA
RECIPE = [*TINY, '-b', '4', '--epochs', '2', '--warmup-epochs', '1', '--no-progress', '--lr', '1e-3',
          '--threads', '1', '--model-ema', '--model-ema-decay', '0.9', '--drop-path', '0.1',
          '--mixup', '0.8', '--cutmix', '1.0', '--aa', 'rand-m9-mstd0.5-inc1', '--reprob', '0.25',
          '--checkpoint-interval', '2', '--seed', '3']


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp('d') / 'data')  # 24 train images: 6 steps of 4


def _rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def _start_and_kill_after(argv, steps_file, n_steps, sig=signal.SIGKILL):
    """Start a slowed-down run, send `sig` once `n_steps` step rows are logged; returns the process."""
    env = dict(os.environ, VITZOO_DEBUG_STEP_SLEEP='0.25', PYTHONUNBUFFERED='1')
    p = subprocess.Popen([sys.executable, TRAIN_PY, *argv], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    t0 = time.time()
    while time.time() - t0 < 240:
        if os.path.exists(steps_file) and len(_rows(steps_file)) >= n_steps:
            break
        if p.poll() is not None:
            raise AssertionError(f'run ended before step {n_steps}: {p.stderr.read()[-2000:]}')
        time.sleep(0.02)
    if sig == signal.SIGINT:  # Ctrl-C reaches the loader workers too: signal the whole group
        os.killpg(p.pid, sig)
    else:
        p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    return p, err


def _assert_same_run(ref_dir, run_dir):
    a, b = load_ckpt(os.path.join(ref_dir, 'last.pth.tar')), load_ckpt(os.path.join(run_dir, 'last.pth.tar'))
    assert states_equal(a['state_dict'], b['state_dict']), 'final weights differ'
    assert states_equal(a['state_dict_ema'], b['state_dict_ema']), 'final EMA weights differ'
    la = [(r['epoch'], r['step'], r['loss']) for r in _rows(os.path.join(ref_dir, 'steps.csv'))]
    lb = [(r['epoch'], r['step'], r['loss']) for r in _rows(os.path.join(run_dir, 'steps.csv'))]
    assert la == lb and len(la) == 12, 'logged step losses differ'
    sa, sb = _rows(os.path.join(ref_dir, 'summary.csv')), _rows(os.path.join(run_dir, 'summary.csv'))
    assert [r['train_loss'] for r in sa] == [r['train_loss'] for r in sb]
    assert [r['eval_ema_top1'] for r in sa] == [r['eval_ema_top1'] for r in sb]


_REFS = {}


def _reference(data, tmp_path_factory, workers):
    """The uninterrupted run (once per worker count for the whole module)."""
    if workers not in _REFS:
        out = tmp_path_factory.mktemp(f'ref{workers}')
        ref = run_cli(data, *RECIPE, '--workers', str(workers), '--output', str(out), '--experiment', 'ref')
        assert ref.returncode == 0, ref.stderr[-2000:]
        _REFS[workers] = str(out / 'ref')
    return _REFS[workers]


@pytest.mark.parametrize('workers', [0, 2])
def test_kill9_mid_epoch_then_resume_equals_uninterrupted(data, tmp_path, tmp_path_factory, workers):
    argv = [data, *RECIPE, '--workers', str(workers), '--output', str(tmp_path)]
    ref_dir = _reference(data, tmp_path_factory, workers)
    run_dir = str(tmp_path / 'k')
    p, _ = _start_and_kill_after([*argv, '--experiment', 'k'], os.path.join(run_dir, 'steps.csv'), 9)
    assert p.returncode == -signal.SIGKILL
    assert os.path.exists(os.path.join(run_dir, 'recovery.pth.tar')), 'no mid-epoch checkpoint'
    assert not os.path.exists(os.path.join(run_dir, 'finished'))
    r = run_cli(*argv, '--experiment', 'k', '--resume', 'auto')
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'resumed' in r.stderr and 'epoch 1 step' in r.stderr  # continued mid-epoch 1
    _assert_same_run(ref_dir, run_dir)
    header = open(os.path.join(run_dir, 'summary.csv')).read().count('epoch,')
    assert header == 1, 'resume wrote a second summary header'


@pytest.mark.parametrize('sig, workers', [(signal.SIGTERM, 0), (signal.SIGINT, 2)])
def test_signal_writes_recovery_and_resume_is_exact(data, tmp_path, tmp_path_factory, sig, workers):
    argv = [data, *RECIPE, '--workers', str(workers), '--output', str(tmp_path)]
    ref_dir = _reference(data, tmp_path_factory, workers)
    run_dir = str(tmp_path / 't')
    p, err = _start_and_kill_after([*argv, '--experiment', 't', '--checkpoint-interval', '0'],
                                   os.path.join(run_dir, 'steps.csv'), 3, sig=sig)
    assert p.returncode == 128 + sig, err[-2000:]
    assert 'Traceback' not in err and 'recovery checkpoint' in err
    rec = load_ckpt(os.path.join(run_dir, 'recovery.pth.tar'))
    assert rec['resume_epoch'] == 0 and rec['resume_step'] >= 3 and len(rec['rng']) == 1
    r = run_cli(*argv, '--experiment', 't', '--resume', 'auto')
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_same_run(ref_dir, run_dir)


@pytest.mark.parametrize('step', ['write', 'fsync', 'replace', 'dirsync'])
@pytest.mark.parametrize('how', ['kill', 'exception'])
def test_last_never_missing_or_partial(tmp_path, step, how):
    """A save interrupted at any step leaves `last` as the old or the new complete file."""
    path = str(tmp_path / 'last.pth.tar')
    old, new = {'v': torch.zeros(1000)}, {'v': torch.ones(1000)}
    ckpts.atomic_save(old, path)

    def hook(s):
        if s == step:
            if how == 'kill':
                os._exit(9)
            raise RuntimeError('injected')
    if how == 'kill':
        pid = os.fork()
        if pid == 0:  # pragma: no cover  (child)
            ckpts._SAVE_HOOK = hook
            try:
                ckpts.atomic_save(new, path)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    else:
        ckpts._SAVE_HOOK = hook
        try:
            with pytest.raises(RuntimeError, match='injected'):
                ckpts.atomic_save(new, path)
        finally:
            ckpts._SAVE_HOOK = None
    got = torch.load(path, weights_only=True)['v']
    expect_new = step == 'dirsync'
    assert torch.equal(got, (new if expect_new else old)['v'])
    if how == 'exception':
        assert [f for f in os.listdir(tmp_path) if '.tmp' in f] == [], 'temp file left behind'


def test_resume_keeps_best_and_appends_summary(data, tmp_path):
    """model_best is never replaced by a worse epoch after resume; summary gets no second header."""
    from vitzoo.cli.train import train
    base = [data, *TINY, *FAST, '--output', str(tmp_path), '--experiment', 'b']
    train(base)
    run = tmp_path / 'b'
    best = load_ckpt(run / 'model_best.pth.tar')
    # a second epoch with a destroyed lr schedule would score worse: force it with a huge lr
    train([*base, '--epochs', '2', '--resume', 'auto', '--opt', 'sgd', '--lr', '50', '--no-resume-opt',
           '--skip-nonfinite', '100'])
    rows = (run / 'summary.csv').read_text().strip().splitlines()
    assert rows[0].startswith('epoch,') and sum(r.startswith('epoch,') for r in rows) == 1
    assert [r.split(',')[0] for r in rows[1:]] == ['0', '1']
    after = load_ckpt(run / 'model_best.pth.tar')
    last = load_ckpt(run / 'last.pth.tar')
    assert after['best_metric'] >= best['best_metric']
    if last.get('best_epoch') == 0:  # epoch 1 was worse: model_best still holds epoch 0
        assert states_equal(after['state_dict'], best['state_dict'])


def test_newest_valid_skips_broken_files(data, tmp_path):
    from vitzoo.cli.train import train
    train([data, *TINY, *FAST, '--epochs', '2', '--output', str(tmp_path), '--experiment', 'n',
           '--checkpoint-hist', '2'])
    run = str(tmp_path / 'n')
    assert ckpts.newest_valid(run) in (os.path.join(run, 'last.pth.tar'), os.path.join(run, 'checkpoint-1.pth.tar'))
    with open(os.path.join(run, 'last.pth.tar'), 'wb') as f:
        f.write(b'truncated')
    assert ckpts.newest_valid(run) == os.path.join(run, 'checkpoint-1.pth.tar')
