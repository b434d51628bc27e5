#!/usr/bin/env python3
"""vitzoo-train against timm's own training loop: same ImageFolder, model, batch, workers, epochs.

The data are scikit-learn's digits written as PNGs (tools/export_digits.py, as `make demo` does).
The reference is timm's real `train.py` run through `python -m vitzoo.timm_scripts train` when
VITZOO_TIMM_SCRIPTS points at a pytorch-image-models checkout (or the script is cached), else a
minimal loop over timm's `create_loader` in this file (`--timm-loop`: persistent workers,
prefetcher, SGD, one eval per epoch, as train.py does). Runs are interleaved (A B, B A, ...)
because the machine is shared; images/s = train images x epochs / wall time of the whole
process (start-up, evaluation and checkpoints included, the same for both), and the result is
the ratio of the medians plus the median of the per-pair ratios.

    python tools/bench_loader.py --runs 3 --epochs 3 --workers 2 -b 64 \
        --out benchmarks/results/loader_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))


def common_flags(a: argparse.Namespace) -> list[str]:
    """Flags both trainers read with the same meaning."""
    return ['--model', a.model, '--img-size', str(a.img_size), '-b', str(a.batch_size), '--epochs', str(a.epochs),
            '--workers', str(a.workers), '--num-classes', '10', '--warmup-epochs', '1', '--seed', '0',
            '--device', 'cpu']


def vitzoo_cmd(a: argparse.Namespace, data: str, out: str, tag: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, 'train_imagenet.py'), data, *common_flags(a), '--output', out,
            '--experiment', tag, '--no-progress']


def timm_cmd(a: argparse.Namespace, data: str, out: str, tag: str, real: bool) -> list[str]:
    if real:
        return [sys.executable, '-m', 'vitzoo.timm_scripts', 'train', data, *common_flags(a), '--output', out,
                '--experiment', tag]
    return [sys.executable, os.path.abspath(__file__), '--timm-loop', data, *common_flags(a)]


def timm_train_py_available() -> bool:
    from vitzoo.timm_scripts import ScriptNotFound, find_script
    try:
        find_script('train.py', download=False)
        return True
    except ScriptNotFound:
        return False


def timm_loop(argv: Sequence[str]) -> None:
    """The fallback reference: timm's create_loader in a plain train/eval loop."""
    p = argparse.ArgumentParser()
    p.add_argument('data')
    for flag in ('--model', '--device'):
        p.add_argument(flag)
    for flag in ('--img-size', '-b', '--epochs', '--workers', '--num-classes', '--warmup-epochs', '--seed'):
        p.add_argument(flag, type=int)
    a = p.parse_args(argv)
    import torch
    import timm
    import vitzoo  # noqa: F401
    from timm.data import create_dataset, create_loader, resolve_data_config
    torch.manual_seed(a.seed)
    model = timm.create_model(a.model, num_classes=a.num_classes)
    cfg = resolve_data_config(dict(img_size=a.img_size), model=model)
    tr = create_dataset('', root=a.data, split='train', is_training=True)
    ev = create_dataset('', root=a.data, split='validation')
    common = dict(batch_size=a.b, num_workers=a.workers, mean=cfg['mean'], std=cfg['std'], device=torch.device('cpu'))
    lt = create_loader(tr, input_size=cfg['input_size'], is_training=True, **common)
    le = create_loader(ev, input_size=cfg['input_size'], crop_pct=cfg['crop_pct'], **common)
    opt = torch.optim.SGD(model.parameters(), lr=0.1 * a.b / 256, momentum=0.9, weight_decay=2e-5)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(a.epochs):
        model.train()
        for x, y in lt:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for x, y in le:
                model(x)


def run_once(cmd: list[str], timeout: int, threads: int) -> tuple[float, int, str]:
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    if threads:
        env['OMP_NUM_THREADS'] = str(threads)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    return time.perf_counter() - t0, p.returncode, (p.stderr or '')[-1500:]


def versions() -> dict:
    import timm
    import torch
    out = dict(python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
               cpus=os.cpu_count(), platform=platform.platform())
    try:
        out['loadavg_at_start'] = os.getloadavg()
    except OSError:  # pragma: no cover
        pass
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == '--timm-loop':
        timm_loop(argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='vitzoo_efficientvit_m0')
    p.add_argument('--img-size', type=int, default=32)
    p.add_argument('-b', '--batch-size', type=int, default=64)
    p.add_argument('--epochs', type=int, default=3)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--runs', type=int, default=3, help='runs of each trainer, interleaved')
    p.add_argument('--threads', type=int, default=1,
                   help='OMP_NUM_THREADS for both trainers (0: leave unset); on a shared machine idle '
                        'OpenMP threads spinning in both processes otherwise measure the contention')
    p.add_argument('--data', default='', help='digits ImageFolder (default: exported to a temp folder)')
    p.add_argument('--reference', default='auto', choices=('auto', 'train.py', 'create_loader'),
                   help="timm's train.py (needs VITZOO_TIMM_SCRIPTS) or the create_loader loop")
    p.add_argument('--timeout', type=int, default=1800, help='seconds per run')
    p.add_argument('--out', default='', help='write the result JSON here')
    a = p.parse_args(argv)
    real = a.reference == 'train.py' or (a.reference == 'auto' and timm_train_py_available())
    if a.reference == 'train.py' and not timm_train_py_available():
        print("error: timm's train.py not found: set VITZOO_TIMM_SCRIPTS to a pytorch-image-models checkout",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data or os.path.join(tmp, 'digits')
        from export_digits import export_digits
        counts = export_digits(data, size=a.img_size)
        n_train = counts['train']
        imgs = n_train // a.batch_size * a.batch_size * a.epochs  # both drop the last partial batch
        times: dict[str, list[float]] = {'vitzoo': [], 'timm': []}
        for i in range(a.runs):
            order = ('vitzoo', 'timm') if i % 2 == 0 else ('timm', 'vitzoo')
            for who in order:
                cmd = vitzoo_cmd(a, data, tmp, f'vz{i}') if who == 'vitzoo' else \
                    timm_cmd(a, data, tmp, f'tm{i}', real)
                dt, rc, err = run_once(cmd, a.timeout, a.threads)
                if rc:
                    print(f'error: {who} run {i} failed (exit {rc}): {err}', file=sys.stderr)
                    return 1
                times[who].append(dt)
                print(f'run {i} {who}: {dt:.1f} s, {imgs / dt:.1f} img/s', file=sys.stderr)
    ips = {k: [imgs / t for t in v] for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in ips.items()}
    pairs = [vz / tm for vz, tm in zip(ips['vitzoo'], ips['timm'])]
    result = dict(
        date=time.strftime('%Y-%m-%d %H:%M:%S %Z'), command=' '.join(['python', 'tools/bench_loader.py', *argv]),
        reference="timm train.py (python -m vitzoo.timm_scripts train)" if real else 'timm create_loader loop',
        model=a.model, img_size=a.img_size, batch_size=a.batch_size, epochs=a.epochs, workers=a.workers,
        omp_num_threads=a.threads or None,
        train_images=n_train, images_per_run=imgs, seconds=times, img_per_s=ips, median_img_per_s=med,
        ratio_of_medians=med['vitzoo'] / med['timm'], median_pair_ratio=statistics.median(pairs),
        versions=versions())
    print(f"vitzoo-train {med['vitzoo']:.1f} img/s, {result['reference']} {med['timm']:.1f} img/s: "
          f"ratio {result['ratio_of_medians']:.3f} (median pair ratio {result['median_pair_ratio']:.3f})")
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, 'w') as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
