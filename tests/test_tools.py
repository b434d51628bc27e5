"""tools/: export_digits, profile_models, validate and the demo's helpers, on tiny inputs."""
import importlib.util
import os
import sys

import pytest
import timm
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tools'))



def make_folder(root, classes=3, n_train=6, n_val=3, size=32):
    """A tiny ImageFolder of random PNGs ({train,val}/class<k>/<i>.png)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (('train', n_train), ('val', n_val)):
        for c in range(classes):
            d = os.path.join(root, split, f'class{c}')
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(a).save(os.path.join(d, f'{i}.png'))
    return str(root)


def load_tool(name):
    """Import tools/<name>.py under a private module name (tools/ is not a package)."""
    path = os.path.join(ROOT, 'tools', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'_vitzoo_tool_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


export_digits = load_tool('export_digits')
profile_models = load_tool('profile_models')
validate_tool = load_tool('validate')


# ---------------------------------------------------------------------------------------------
# export_digits
# ---------------------------------------------------------------------------------------------

def test_export_digits_layout_and_counts(tmp_path):
    pytest.importorskip('sklearn')
    out = tmp_path / 'digits'
    counts = export_digits.export_digits(str(out), size=16)
    assert counts['train'] + counts['val'] == 1797
    assert counts['val'] == pytest.approx(0.2 * 1797, abs=10)
    for split in ('train', 'val'):
        classes = sorted(os.listdir(out / split))
        assert classes == [str(d) for d in range(10)]
        n = sum(len(os.listdir(out / split / c)) for c in classes)
        assert n == counts[split]
        # stratified: every class has its share in both splits
        assert min(len(os.listdir(out / split / c)) for c in classes) >= (25 if split == 'val' else 120)
    from PIL import Image
    with Image.open(next((out / 'val' / '3').iterdir())) as im:
        assert im.size == (16, 16) and im.mode == 'RGB'
    # a second call reuses the export instead of writing it again
    stamp = os.path.getmtime(out / 'export.json')
    assert export_digits.export_digits(str(out), size=16) == counts
    assert os.path.getmtime(out / 'export.json') == stamp


def test_export_digits_rejects_bad_size(tmp_path):
    with pytest.raises(ValueError, match='size'):
        export_digits.export_digits(str(tmp_path), size=4)


# ---------------------------------------------------------------------------------------------
# profile_models
# ---------------------------------------------------------------------------------------------

def test_profile_counts_params_and_flops():
    row = profile_models.profile_model('test_convnext', img_size=32, batch_size=2, warmup=0,
                                       repeats=1, torch_flops=True)
    model = timm.create_model('test_convnext')
    assert row['params_m'] * 1e6 == pytest.approx(sum(p.numel() for p in model.parameters()), abs=0.5)
    assert row['gmacs'] > 0
    # fvcore (1 multiply-add = 1) and torch's counter (halved) agree to a few percent
    assert row['gmacs'] == pytest.approx(row['gmacs_torch'], rel=0.05)
    assert row['ms_b1'] > 0 and row['ms_b2'] > 0 and row['img_s_b2'] > 0
    assert row['input'] == '3x32x32'


def test_fvcore_counts_fused_attention():
    """SDPA has no fvcore handle of its own; ours counts q@k^T and attn@v."""
    model = profile_models.build_model('test_vit', img_size=32)
    x = torch.randn(1, 3, 32, 32)
    fv = profile_models.count_flops(model, x)
    tf = profile_models.count_flops_torch(model, x) / 2
    assert fv == pytest.approx(tf, rel=0.03)
    attn_macs = 0
    for blk in model.blocks:  # per block: 2 * heads * N^2 * head_dim
        n = model.patch_embed.num_patches + model.num_prefix_tokens
        attn_macs += 2 * n * n * blk.attn.head_dim * blk.attn.num_heads
    with torch.no_grad():
        from fvcore.nn import FlopCountAnalysis
        plain = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).total()
    assert fv - plain == attn_macs


def test_resolve_names_and_twins():
    assert profile_models.resolve_names(['test_vit', 'test_vit*'])[0] == 'test_vit'
    with pytest.raises(ValueError, match='no_such_model'):
        profile_models.resolve_names(['no_such_model'])
    assert profile_models.timm_twin('vitzoo_swin_tiny_patch4_window7_224') == 'swin_tiny_patch4_window7_224'
    assert profile_models.timm_twin('vitzoo_not_in_timm') is None
    assert profile_models.timm_twin('resnet50') is None


def test_markdown_table():
    table = profile_models.markdown_table([dict(model='a', x=1.23456, y=None), dict(model='b', x=123.0)])
    lines = table.splitlines()
    assert lines[0] == '| model | x | y |'
    assert lines[2] == '| a | 1.235 | - |' and lines[3] == '| b | 123.0 | - |'


def test_compare_with_timm_reports_ratio():
    name = 'vitzoo_poolformer_s12'
    if not timm.is_model(name):
        pytest.skip(f'{name} is not registered yet')
    row = profile_models.compare_with_timm(name, batch_sizes=(1,), img_size=32, warmup=0, repeats=2)
    assert row['versus'] == 'poolformer_s12'
    assert row['params_m'] == pytest.approx(row['versus_params_m'])
    assert row['ratio_b1'] > 0 and row['ms_b1'] > 0 and row['versus_ms_b1'] > 0


def test_versus_compares_any_two_models(capsys):
    rc = profile_models.main(['test_convnext', '--versus', 'test_vit', '--img-size', '32',
                              '--warmup', '0', '--repeats', '2'])
    assert rc == 0
    table = capsys.readouterr().out
    assert '| test_convnext | test_vit |' in table and 'ratio_b1' in table


def test_profile_cli_writes_json(tmp_path, capsys):
    out = tmp_path / 'p.json'
    rc = profile_models.main(['test_convnext', '--img-size', '32', '-b', '2', '--warmup', '0',
                              '--repeats', '1', '--json', str(out), '--csv', str(tmp_path / 'p.csv')])
    assert rc == 0
    import json
    data = json.loads(out.read_text())
    assert data['rows'][0]['model'] == 'test_convnext' and 'torch' in data['env']
    assert '| test_convnext |' in capsys.readouterr().out
    assert (tmp_path / 'p.csv').read_text().startswith('model,')


# ---------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------

def test_validate_checkpoint_reports_top1(tmp_path):
    import train_imagenet
    data = make_folder(tmp_path / 'data')
    result = train_imagenet.main([
        data, '--model', 'test_convnext', '--img-size', '32', '-b', '4', '--epochs', '1',
        '--workers', '0', '--no-progress', '--lr', '1e-3', '--warmup-epochs', '0',
        '--output', str(tmp_path / 'out'), '--experiment', 'v', '--threads', '1'])
    ckpt = os.path.join(result['output_dir'], 'last.pth.tar')
    r = validate_tool.validate([data, '--checkpoint', ckpt, '--workers', '0', '--no-progress', '-b', '4'])
    assert r['model'] == 'test_convnext'  # model and input size come from the checkpoint's args
    assert 0.0 <= r['top1'] <= 100.0 and r['top1'] <= r['top5'] <= 100.0
    assert r['images'] == 9
    # the same weights evaluated in training give the same numbers
    assert r['top1'] == pytest.approx(result['eval']['top1'])
    assert r['loss'] == pytest.approx(result['eval']['loss'], rel=1e-4)


def test_validate_fresh_model_and_errors(tmp_path):
    data = make_folder(tmp_path / 'data', classes=2, n_train=1, n_val=2)
    r = validate_tool.validate([data, '--model', 'test_convnext', '--img-size', '32',
                                '--workers', '0', '--no-progress'])
    assert 0.0 <= r['top1'] <= 100.0 and r['images'] == 4
    with pytest.raises(FileNotFoundError, match='nowhere'):
        validate_tool.validate([str(tmp_path / 'nowhere'), '--model', 'test_convnext'])
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        validate_tool.validate([data, '--checkpoint', str(tmp_path / 'missing.pth')])
    with pytest.raises(ValueError, match="unknown model 'nope_net'"):
        validate_tool.validate([data, '--model', 'nope_net'])


# ---------------------------------------------------------------------------------------------
# demo helpers
# ---------------------------------------------------------------------------------------------

def test_demo_recipe_model_and_threads():
    demo = load_tool('demo')
    assert 1 <= demo.pick_threads() <= (os.cpu_count() or 1)
    import train_imagenet
    cfg = train_imagenet.load_config(demo.CONFIG, train_imagenet.build_parser())
    assert cfg['model'] == demo.DEMO_MODEL
    assert cfg['hflip'] == 0.0, 'digits must not be mirrored'


def test_demo_profile_table():
    """The profile part of `make demo` (one model, tiny budget) prints its table."""
    demo = load_tool('demo')
    rows = demo.profile_zoo(['vitzoo_efficientvit_m0'], budget_s=60.0)
    assert len(rows) == 1 and rows[0]['gmacs'] > 0 and rows[0]['img_s'] > 0
    assert 'vitzoo_efficientvit_m0' in demo.markdown_table(rows)


@pytest.mark.slow
def test_demo_reaches_target(tmp_path):
    """The full `make demo` training (about two minutes on two idle cores)."""
    demo = load_tool('demo')
    rc = demo.main(['--data-dir', str(tmp_path / 'digits'), '--output', str(tmp_path / 'out'),
                    '--no-profile', '--no-progress'])
    assert rc == 0
