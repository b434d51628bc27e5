"""timm's own `train.py` / `validate.py` / `benchmark.py` with the zoo registered.

    python -m vitzoo.timm_scripts train /data/imagenet --model vitzoo_shvit_s1 --amp
    python -m vitzoo.timm_scripts validate /data/imagenet --model vitzoo_shvit_s1 --checkpoint best.pth.tar

The scripts are not part of timm's wheel. They are looked for in `$VITZOO_TIMM_SCRIPTS` (a folder,
e.g. a pytorch-image-models checkout at the installed timm's tag), then in the cache
(`$VITZOO_CACHE`, default ~/.cache/vitzoo, under timm-<version>/), then in timm's source
distribution (`pip download`), which some timm versions (1.0.31 among them) ship without them.
A version whose sdist lacks a script is remembered in the cache (`sdist-checked.json`), so the
sdist is downloaded once per version, not on every call.
"""
from __future__ import annotations

import json
import os
import pathlib
import runpy
import subprocess
import sys
import tarfile
import tempfile
from typing import Optional, Sequence

SCRIPTS = {'train': 'train.py', 'validate': 'validate.py', 'benchmark': 'benchmark.py'}


class ScriptNotFound(RuntimeError):
    """timm's script is in none of the places looked at (the message says where to get it)."""


def _cache_dir(version: str) -> pathlib.Path:
    root = pathlib.Path(os.environ.get('VITZOO_CACHE', pathlib.Path.home() / '.cache' / 'vitzoo'))
    return root / f'timm-{version}'


def _from_sdist(version: str, dest: pathlib.Path) -> list[str]:
    """Extract the top-level scripts of timm's sdist into `dest`; returns what it held ([] if none)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:', '--quiet',
               '--disable-pip-version-check', '-d', tmp, f'timm=={version}']
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            raise ScriptNotFound(f'pip download of timm {version} took over 300 s (package index unreachable?)') from None
        sdists = list(pathlib.Path(tmp).glob('timm-*.tar.gz'))
        if proc.returncode or not sdists:
            last = (proc.stderr.strip().splitlines() or ['no output'])[-1]
            raise ScriptNotFound(f'cannot download timm {version} source distribution: {last}')
        found = []
        with tarfile.open(sdists[0]) as tar:
            for m in tar.getmembers():
                parts = m.name.split('/')
                if len(parts) == 2 and parts[1] in SCRIPTS.values() and m.isfile():
                    dest.mkdir(parents=True, exist_ok=True)
                    (dest / parts[1]).write_bytes(tar.extractfile(m).read())
                    found.append(parts[1])
        return found


_MARKER = 'sdist-checked.json'


def _sdist_checked(cache: pathlib.Path) -> Optional[list[str]]:
    """The scripts timm's sdist held when it was last downloaded for this version (None: never)."""
    try:
        return list(json.loads((cache / _MARKER).read_text())['found'])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_script(name: str, download: bool = True) -> pathlib.Path:
    """The path of timm's `name` (train.py, validate.py, benchmark.py) for the installed timm."""
    import timm
    version = timm.__version__
    folder = os.environ.get('VITZOO_TIMM_SCRIPTS')
    places = []
    if folder:
        places.append(pathlib.Path(folder))
    cache = _cache_dir(version)
    places.append(cache)
    for p in places:
        if (p / name).is_file():
            return p / name
    checked = _sdist_checked(cache)
    if download and checked is None:
        checked = _from_sdist(version, cache)
        cache.mkdir(parents=True, exist_ok=True)
        (cache / _MARKER).write_text(json.dumps(dict(version=version, found=checked)))
        if (cache / name).is_file():
            return cache / name
    looked = ', '.join(str(p) for p in places)
    if checked is not None:
        looked += f' and timm {version} sdist (remembered in {cache / _MARKER})'
    ships = f"timm's wheel and its {version} sdist do" if checked is not None else "timm's wheel does"
    raise ScriptNotFound(
        f"timm's {name} not found (looked in {looked}); {ships} not ship it: clone "
        f"https://github.com/huggingface/pytorch-image-models at tag v{version} and set VITZOO_TIMM_SCRIPTS "
        f"to that folder")


def run_script(path: pathlib.Path, argv: Sequence[str]) -> None:
    """Run timm's script as __main__ after registering the zoo (its imports resolve from its folder)."""
    import vitzoo  # noqa: F401  (registers every zoo model in timm)
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = [str(path), *argv]
    sys.path.insert(0, str(path.parent))
    try:
        runpy.run_path(str(path), run_name='__main__')
    finally:
        sys.argv, sys.path[:] = old_argv, old_path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m vitzoo.timm_scripts {train,validate,benchmark} ARGS...`; one line on a missing script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SCRIPTS:
        print(f"usage: python -m vitzoo.timm_scripts {{{','.join(SCRIPTS)}}} [timm script arguments]", file=sys.stderr)
        return 2
    try:
        path = find_script(SCRIPTS[argv[0]], download=os.environ.get('VITZOO_NO_DOWNLOAD', '') in ('', '0'))
    except ScriptNotFound as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    try:
        run_script(path, argv[1:])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
