"""`python -m vitzoo.timm_scripts`: timm's own train.py / validate.py with the zoo registered."""
import os
import subprocess
import sys

import pytest
from train_helpers import ROOT, make_folder

from vitzoo import timm_scripts


def test_missing_script_is_one_line_naming_where_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('VITZOO_TIMM_SCRIPTS', str(tmp_path / 'none'))
    monkeypatch.setenv('VITZOO_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setenv('VITZOO_NO_DOWNLOAD', '1')
    assert timm_scripts.main(['validate', '--help']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "validate.py not found" in err and 'VITZOO_TIMM_SCRIPTS' in err, err
    assert timm_scripts.main(['bogus']) == 2


def test_script_runs_as_main_with_the_zoo_registered(tmp_path, monkeypatch, capsys):
    (tmp_path / 'helper_mod.py').write_text('VALUE = 7\n')  # the script's own folder is importable, like timm's
    (tmp_path / 'train.py').write_text(
        'import sys, timm, helper_mod\n'
        'if __name__ == "__main__":\n'
        '    print("zoo", timm.is_model("vitzoo_shvit_s1"), helper_mod.VALUE, sys.argv[1:])\n'
        '    sys.exit(3)\n')
    monkeypatch.setenv('VITZOO_TIMM_SCRIPTS', str(tmp_path))
    argv_before = list(sys.argv)
    assert timm_scripts.main(['train', '--model', 'vitzoo_shvit_s1']) == 3
    assert "zoo True 7 ['--model', 'vitzoo_shvit_s1']" in capsys.readouterr().out
    assert sys.argv == argv_before and str(tmp_path) not in sys.path


def _timm_script_or_skip(name):
    try:
        return timm_scripts.find_script(name, download=False)
    except timm_scripts.ScriptNotFound as e:
        pytest.skip(f'{e}')


def test_timm_train_and_validate_run_a_zoo_model(tmp_path):
    _timm_script_or_skip('train.py')
    _timm_script_or_skip('validate.py')
    data = make_folder(tmp_path / 'data', classes=3, n_train=4, n_val=2, size=64)
    os.rename(os.path.join(data, 'val'), os.path.join(data, 'validation'))
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    common = ['--model', 'vitzoo_shvit_s1', '--num-classes', '3', '--img-size', '64', '--workers', '0',
              '--device', 'cpu']
    r = subprocess.run([sys.executable, '-m', 'vitzoo.timm_scripts', 'train', '--data-dir', data, *common,
                        '-b', '4', '--epochs', '1', '--warmup-epochs', '0', '--lr', '1e-3', '--output',
                        str(tmp_path / 'out'), '--experiment', 'e'],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = tmp_path / 'out' / 'e' / 'last.pth.tar'
    assert ckpt.is_file()
    r = subprocess.run([sys.executable, '-m', 'vitzoo.timm_scripts', 'validate', '--data-dir', data, *common,
                        '--split', 'validation', '-b', '2', '--checkpoint', str(ckpt)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0 and 'top1' in (r.stdout + r.stderr), r.stderr[-2000:]
