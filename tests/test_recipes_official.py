"""Every recipe equals the authors' settings, field by field, and says where each value comes from.

`vitzoo/results/official_recipes.csv` holds the official values (one row per zoo model, with the
repository, commit and file/line of each, from the audit in the project's shared notes). A row
whose `no_official_source` is set gives the rule used instead. The recipes are read through the
trainer's own parser and rules (vitzoo.cli.effective_config): the global batch, the lr after
scaling and the epochs actually run are compared, not only the raw keys.
"""
from __future__ import annotations

import csv
import os
import re

import pytest
import timm

import vitzoo  # noqa: F401  (registers the zoo)
from vitzoo.cli.effective_config import differences, effective, official_table
from vitzoo.cli.recipes import all_recipes
from vitzoo.cli.train_args import parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = os.path.join(ROOT, 'vitzoo', 'results', 'official_recipes.csv')
CITATION = re.compile(r'[\w.-]+/[\w.-]+@[0-9a-f]{7,40}')
ROWS = official_table()


def _header(path: str) -> str:
    lines = []
    with open(path) as f:
        for line in f:
            if not line.startswith('#'):
                break
            lines.append(line[1:].strip())
    return ' '.join(lines)


def test_the_packaged_table_is_the_repository_file():
    with open(TABLE, newline='') as f:
        assert len(list(csv.DictReader(f))) == len(ROWS) == 84


def test_every_zoo_model_has_one_recipe_and_one_row():
    models = set(timm.list_models('vitzoo_*'))
    assert len(models) == 84
    recipes = {n: p for n, p in all_recipes().items() if not n.startswith('demo/')}
    assert set(recipes) == set(ROWS), set(recipes) ^ set(ROWS)
    by_model = {r['model']: n for n, r in ROWS.items()}
    assert len(by_model) == len(ROWS) and set(by_model) == models, set(by_model) ^ models


@pytest.mark.parametrize('name', sorted(ROWS))
def test_recipe_equals_the_official_values(name, monkeypatch):
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    row = ROWS[name]
    args = parse_args(['--config', name, '--print-config'])
    assert args.model == row['model']
    assert args.recipe_gpus == row['gpus'], 'the recipe names the process count of its global batch'
    eff = effective(args, world_size=row['gpus'])
    wrong = [f'{col}: recipe {got!r}, official {want!r}' for col, (got, want) in differences(eff, row).items()]
    # the lr's scaling rule: the official point (lr_base at lr_base_size) scaled linearly
    if (args.lr, args.lr_base_scale, args.lr_base, args.lr_base_size) != (None, 'linear', row['lr_base'],
                                                                         row['lr_base_size']):
        wrong.append(f'lr rule: recipe lr {args.lr} lr_base {args.lr_base} @ {args.lr_base_size} '
                     f'{args.lr_base_scale!r}, table {row["lr_base"]} @ {row["lr_base_size"]} linear')
    assert row['global_batch'] == row['gpus'] * row['batch_size'] * row['grad_accum_steps']
    assert row['lr'] == pytest.approx(row['lr_base'] * row['global_batch'] / row['lr_base_size'])
    assert not wrong, f'{name}: ' + '; '.join(wrong)


@pytest.mark.parametrize('name', sorted(ROWS))
def test_recipe_header_cites_its_source(name):
    row = ROWS[name]
    text = _header(all_recipes()[name])
    cited = CITATION.findall(row['source'] or '')
    assert cited, f'{name}: the table row cites no repo@commit'
    assert re.search(r'\.(py|yml|yaml|sh|md|txt)\b|issues/\d+', row['source']), f'{name}: no file cited'
    missing = [c for c in cited if c not in text]
    assert not missing, f'{name}: header does not cite {missing}'
    assert 'Source' in text, f'{name}: header has no Source line'
    if row['no_official_source']:
        assert row['rule'], f'{name}: no official source but no rule in the table'
        assert re.search(r'no official source', text, re.I) and 'Rule used' in text, \
            f'{name}: header must say "no official source" and name the rule used'
    if row['status'] == 'no official source':
        assert row['no_official_source'] == 'all'
        assert 'NO OFFICIAL SOURCE' in text and not re.search(r'\bthe official (fine-tuning |pre-training )?recipe\b',
                                                               text, re.I), name
    else:
        assert 'Official values' in text, name


def test_table_statuses_are_explicit():
    statuses = {}
    for name, row in ROWS.items():
        statuses.setdefault(row['status'], []).append(name)
        if row['status'] == 'official':
            assert not row['no_official_source'] and not row['rule'], name
        else:
            assert row['no_official_source'] and row['rule'], name
    assert set(statuses) <= {'official', 'official except drop_path', 'no official source'}
    # the audit: no official source for Swin-L-224 (1k), Swin-T/S-384, DiNAT 22k pre-training (3),
    # DiNAT-L-384-11x11, CrossViT-408 (2), EViT-T/B; BiFormer-B's drop path
    assert sorted(statuses['no official source']) == sorted([
        'swin/swin_large_patch4_window7_224', 'swin/swin_tiny_patch4_window12_384',
        'swin/swin_small_patch4_window12_384', 'dinat/dinat_large_21k', 'dinat/dinat_large_21k_11x11',
        'dinat/dinat_s_large_21k', 'dinat/dinat_large_384_11x11', 'crossvit/crossvit_15_dagger_408',
        'crossvit/crossvit_18_dagger_408', 'evit/evit_deit_tiny_patch16_224', 'evit/evit_deit_base_patch16_224'])
    assert statuses['official except drop_path'] == ['biformer/biformer_base']


def test_readme_training_names_every_source():
    """README's Training section lists, per family, the repository and commit its recipes come from."""
    text = open(os.path.join(ROOT, 'README.md')).read()
    training = text[text.index('## Training'):]
    training = training[:training.index('\n## ', 1)] if '\n## ' in training[1:] else training
    cited = {c for row in ROWS.values() for c in CITATION.findall(row['source'])}
    missing = sorted(c for c in cited if c not in training)
    assert not missing, f'README Training section does not cite {missing}'
    assert 'no official source' in training.lower() and 'token_label' in training


def test_differences_name_every_changed_field(monkeypatch):
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    row = ROWS['shvit/shvit_s2']
    args = parse_args(['--config', 'shvit/shvit_s2', '--print-config', '--weight-decay', '0.025', '--amp',
                       '-b', '128'])
    diff = differences(effective(args, world_size=8), row)
    assert diff['weight_decay'] == (0.025, 0.032) and diff['amp'] == (True, False)
    assert diff['global_batch'] == (1024, 2048) and diff['lr'] == (pytest.approx(2e-3), 4e-3)
    assert 'epochs_run' not in diff and 'aug_repeats' not in diff


@pytest.mark.parametrize('name', [n for n in sorted(ROWS) if re.match(r'(caformer|convformer|poolformer)/(caformer|convformer|poolformer)_', n)])
def test_metaformer_recipes_train_the_official_head(name, monkeypatch):
    """The official models put the head dropout after the hidden layer (sail-sg MlpHead) and use their
    own head norms: a recipe trains that model, not timm's head (kept for timm's weights)."""
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    args = parse_args(['--config', name, '--print-config'])
    assert args.model_kwargs.get('official_head') is True
    model = timm.create_model(args.model, device='meta', **args.model_kwargs)
    assert model.official_head is True
