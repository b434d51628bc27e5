"""Finding a training recipe by file path or by name in the package data `vitzoo.configs`.

`configs/<family>/<variant>.yaml` ships as the package `vitzoo.configs` (in a source checkout
the editable install maps it to configs/); a name such as `swin/swin_tiny_patch4_window7_224`,
`swin_tiny_patch4_window7_224`, the model name `vitzoo_swin_tiny_patch4_window7_224` or an
older recipe name (`swin_tiny_in1k`) finds it. Names resolve only there, through
importlib.resources: no folder beside the installed package (say a `configs/` another
distribution put into site-packages) is ever searched.
"""
from __future__ import annotations

import glob
import importlib.resources
import os

from .errors import ConfigError

# recipe names of the first release, kept working
ALIASES = {
    'swin_tiny_in1k': 'swin/swin_tiny_patch4_window7_224',
    'poolformer_s12_in1k': 'poolformer/poolformer_s12',
    'nat_mini_in1k': 'nat/nat_mini',
    'deit_small_evit_in1k': 'evit/evit_deit_small_patch16_224',
    'demo_digits': 'demo/digits',
    'biformer_tiny_in1k': 'biformer/biformer_tiny',
    'biformer_small_in1k': 'biformer/biformer_small',
    'biformer_base_in1k': 'biformer/biformer_base',
    'biformer_stl_in1k': 'biformer/biformer_stl',
}


def recipe_roots() -> list[str]:
    """The folder of the package `vitzoo.configs` (the only place names are looked up), or none."""
    try:
        root = importlib.resources.files('vitzoo.configs')
    except ModuleNotFoundError:  # a broken install: only explicit paths work
        return []
    path = os.fspath(root) if isinstance(root, os.PathLike) else str(root)
    return [path] if os.path.isdir(path) else []


def all_recipes() -> dict[str, str]:
    """{'family/variant': path} for every recipe found (the first root wins)."""
    out: dict[str, str] = {}
    for root in recipe_roots():
        for path in sorted(glob.glob(os.path.join(root, '**', '*.yaml'), recursive=True)):
            name = os.path.relpath(path, root)[:-len('.yaml')].replace(os.sep, '/')
            out.setdefault(name, path)
    return out


def resolve_recipe(name: str) -> str:
    """A recipe file path for a path or a name; ConfigError listing near names otherwise."""
    if os.path.isfile(name):
        return name
    key = name[:-len('.yaml')] if name.endswith('.yaml') else name
    key = key[len('configs/'):] if key.startswith('configs/') else key
    key = ALIASES.get(key, key)
    recipes = all_recipes()
    if key in recipes:
        return recipes[key]
    stem = key[len('vitzoo_'):] if key.startswith('vitzoo_') else key
    hits = [p for n, p in recipes.items() if n.rsplit('/', 1)[-1] == stem]
    if len(hits) == 1:
        return hits[0]
    import difflib
    close = difflib.get_close_matches(key, list(recipes) + list(ALIASES), n=3, cutoff=0.5)
    hint = f" (close: {', '.join(close)})" if close else ''
    raise ConfigError(f'config not found: {name} is neither a file nor a recipe name{hint}')
