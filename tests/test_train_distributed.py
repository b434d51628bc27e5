"""Two CPU processes (gloo) through torchrun: DDP and FSDP2 (--fsdp) equal the one-process run.

One full-batch step per epoch, no augmentation and SGD make the order of the samples irrelevant,
so 2 x 6 images must give the weights of 1 x 12 up to float round-off.
"""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from train_helpers import ROOT, TINY, load_ckpt, make_folder

COMMON = [*TINY, '--epochs', '2', '--warmup-epochs', '0', '--workers', '0', '--no-progress', '--opt', 'sgd',
          '--lr', '0.1', '--threads', '1', '--smoothing', '0', '--no-aug', '--hflip', '0']


@pytest.fixture(scope='module')
def one_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('dist')
    data = make_folder(tmp / 'data', n_train=4, n_val=2)
    from vitzoo.cli.train import train
    r = train([data, *COMMON, '-b', '12', '--output', str(tmp / 'out'), '--experiment', 'one'])
    return data, tmp, load_ckpt(os.path.join(r['output_dir'], 'last.pth.tar'))['state_dict']


def _torchrun(data, out, *extra):
    torchrun = shutil.which('torchrun', path=os.path.dirname(sys.executable)) or 'torchrun'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    p = subprocess.run([torchrun, '--standalone', '--nproc_per_node', '2', os.path.join(ROOT, 'train_imagenet.py'),
                        data, *COMMON, '-b', '6', '--output', str(out), *extra],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.parametrize('mode', ['ddp', 'fsdp'])
def test_two_processes_equal_one(one_process, mode):
    data, tmp, ref = one_process
    _torchrun(data, tmp / 'out', '--experiment', mode, *(['--fsdp'] if mode == 'fsdp' else []))
    got = load_ckpt(tmp / 'out' / mode / 'last.pth.tar')['state_dict']
    assert got.keys() == ref.keys()
    diff = max((got[k].float() - ref[k].float()).abs().max().item() for k in ref)
    assert diff < 1e-5, f'{mode}: max abs weight difference {diff}'


@pytest.mark.slow
def test_fsdp_resume_equals_uninterrupted(one_process):
    """An FSDP run stopped after epoch 0 and resumed (AdamW state, full state dicts) ends equal."""
    data, tmp, _ = one_process
    extra = ['--fsdp', '--opt', 'adamw', '--lr', '0.01', '--sched', 'step', '--decay-epochs', '100']
    _torchrun(data, tmp / 'out', '--experiment', 'ffull', *extra)
    _torchrun(data, tmp / 'out', '--experiment', 'fpart', *extra, '--epochs', '1')
    _torchrun(data, tmp / 'out', '--experiment', 'fpart', *extra, '--resume', 'auto')
    a = load_ckpt(tmp / 'out' / 'ffull' / 'last.pth.tar')['state_dict']
    b = load_ckpt(tmp / 'out' / 'fpart' / 'last.pth.tar')['state_dict']
    assert all(torch.equal(a[k], b[k]) for k in a)


def _kill_tree(pid):
    """SIGKILL a process and every descendant, by id (torchrun's workers run in their own sessions)."""
    import signal

    def children(p):
        out = []
        try:
            tasks = os.listdir(f'/proc/{p}/task')
        except OSError:
            return out
        for t in tasks:
            try:
                kids = open(f'/proc/{p}/task/{t}/children').read().split()
            except OSError:
                kids = []
            for k in kids:
                out += [int(k)] + children(int(k))
        return out
    for q in [pid] + children(pid):
        try:
            os.kill(q, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir('/proc'), reason='needs /proc to find the workers')
def test_ddp_kill9_mid_epoch_resume_is_exact(tmp_path):
    """2-process DDP with drop path, mixup and EMA, killed after a mid-epoch checkpoint, resumes exactly."""
    import time
    data = make_folder(tmp_path / 'data')
    torchrun = shutil.which('torchrun', path=os.path.dirname(sys.executable)) or 'torchrun'
    argv = [torchrun, '--standalone', '--nproc_per_node', '2', os.path.join(ROOT, 'train_imagenet.py'), data,
            *TINY, '-b', '2', '--epochs', '2', '--warmup-epochs', '1', '--workers', '0', '--no-progress',
            '--lr', '1e-3', '--threads', '1', '--output', str(tmp_path), '--model-ema', '--drop-path', '0.1',
            '--mixup', '0.8', '--cutmix', '1.0', '--checkpoint-interval', '2']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    assert subprocess.run([*argv, '--experiment', 'ref'], capture_output=True, env=env, timeout=300).returncode == 0
    p = subprocess.Popen([*argv, '--experiment', 'k'], env=dict(env, VITZOO_DEBUG_STEP_SLEEP='0.3'),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    while not (tmp_path / 'k' / 'recovery.pth.tar').exists() and time.time() - t0 < 240:
        time.sleep(0.05)
    time.sleep(0.4)
    _kill_tree(p.pid)
    p.wait()
    assert not (tmp_path / 'k' / 'finished').exists()
    r = subprocess.run([*argv, '--experiment', 'k', '--resume', 'auto'], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0 and 'recovery.pth.tar' in r.stderr, r.stderr[-2000:]
    a, b = load_ckpt(tmp_path / 'ref' / 'last.pth.tar'), load_ckpt(tmp_path / 'k' / 'last.pth.tar')
    for key in ('state_dict', 'state_dict_ema'):
        assert all(torch.equal(a[key][n], b[key][n]) for n in a[key]), key
    assert (tmp_path / 'ref' / 'steps.csv').read_text() == (tmp_path / 'k' / 'steps.csv').read_text()
