"""vitzoo-train speaks timm train.py's dialect: its flag names and defaults, its args.yaml, sync-BN, distillation."""
import importlib.util
import logging
import os
import pathlib
import sys

import pytest
import timm
import torch
import torch.nn as nn
import yaml
from train_helpers import make_folder

import vitzoo  # noqa: F401
from vitzoo.cli import distill
from vitzoo.cli.errors import ConfigError
from vitzoo.cli.train import apply_sync_bn, main
from vitzoo.cli.train_args import build_parser, parse_args

#: timm 1.0.x train.py's parser defaults (its dests), the fallback when timm's script is not at hand
TIMM_DEFAULTS = dict(
    data=None, data_dir=None, dataset='', train_split='train', val_split='validation', dataset_download=False,
    class_map='', input_img_mode=None, input_key=None, target_key=None, dataset_trust_remote_code=False,
    train_num_samples=None, val_num_samples=None, model='resnet50', pretrained=False, pretrained_path=None,
    initial_checkpoint='', resume='', no_resume_opt=False, num_classes=None, gp=None, img_size=None,
    in_chans=None, input_size=None, crop_pct=None, mean=None, std=None, interpolation='', batch_size=128,
    validation_batch_size=None, channels_last=False, fuser='', grad_accum_steps=1, grad_checkpointing=False,
    fast_norm=False, model_kwargs={}, head_init_scale=None, head_init_bias=None, torchcompile_mode=None,
    model_dtype=None, torchscript=False, torchcompile=None, opt='sgd', opt_eps=None, opt_betas=None,
    momentum=0.9, weight_decay=2e-5, clip_grad=None, clip_mode='norm', layer_decay=None,
    layer_decay_min_scale=None, layer_decay_no_opt_scale=None, opt_kwargs={}, sched='cosine',
    sched_on_updates=False, lr=None, lr_base=0.1, lr_base_size=256, lr_base_scale='', lr_noise=None,
    lr_noise_pct=0.67, lr_noise_std=1.0, lr_cycle_mul=1.0, lr_cycle_decay=0.5, lr_cycle_limit=1,
    lr_k_decay=1.0, warmup_lr=1e-5, min_lr=0, epochs=300, epoch_repeats=0., start_epoch=None,
    decay_milestones=[90, 180, 270], decay_epochs=90, warmup_epochs=5, warmup_prefix=False,
    cooldown_epochs=0, patience_epochs=10, decay_rate=0.1, no_aug=False, train_crop_mode=None,
    scale=[0.08, 1.0], ratio=[3. / 4., 4. / 3.], hflip=0.5, vflip=0., color_jitter=0.4, aa=None,
    aug_repeats=0, aug_splits=0, jsd_loss=False, bce_loss=False, bce_sum=False, bce_target_thresh=None,
    bce_pos_weight=None, reprob=0., remode='pixel', recount=1, resplit=False, mixup=0.0, cutmix=0.0,
    cutmix_minmax=None, mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode='batch', mixup_off_epoch=0,
    smoothing=0.1, train_interpolation='random', drop=0.0, drop_connect=None, drop_path=None,
    drop_block=None, bn_momentum=None, bn_eps=None, sync_bn=False, dist_bn='reduce', split_bn=False,
    model_ema=False, model_ema_force_cpu=False, model_ema_decay=0.9998, model_ema_warmup=False,
    seed=42, worker_seeding='all', log_interval=50, recovery_interval=0, checkpoint_hist=10, workers=4,
    save_images=False, pin_mem=False, no_prefetcher=False, output='', experiment='', eval_metric='top1',
    tta=0, local_rank=0, use_multi_epochs_loader=False, log_wandb=False, wandb_project=None,
    wandb_tags=[], wandb_resume_id='', amp=False, amp_dtype='float16', amp_impl='native',
    no_ddp_bb=False, synchronize_step=False, device='cuda', device_modules=None,
)

#: our deliberate differences from timm's defaults (README, Training)
DIFFERENT = {'model', 'drop', 'amp_dtype', 'device', 'data'}
#: timm key -> our dest
ALIASES = {'opt_kwargs': 'opt_args', 'recovery_interval': 'checkpoint_interval', 'drop_connect': 'drop_path'}


def _timm_train_defaults() -> dict:
    """timm's own train.py parser defaults when its script is at hand (see vitzoo.timm_scripts), else ours above."""
    try:
        from vitzoo.timm_scripts import find_script
        path = find_script('train.py', download=False)
    except Exception:
        return dict(TIMM_DEFAULTS)
    spec = importlib.util.spec_from_file_location('timm_train_script', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return vars(module.parser.parse_args([]))


def test_timm_flag_names_and_aliases_parse():
    a = parse_args(['d', '--recovery-interval', '3', '--dr', '0.2', '--opt-kwargs', 'foo=1', '--drop-connect', '0.1',
                    '--local_rank', '0', '--lr-cycle-limit', '2', '--lr-noise', '0.4', '0.8', '--bn-eps', '1e-3'])
    assert (a.checkpoint_interval, a.decay_rate, a.opt_args, a.drop_path) == (3, 0.2, {'foo': 1}, 0.1)
    assert (a.lr_cycle_limit, a.lr_noise, a.bn_eps) == (2, [0.4, 0.8], 1e-3)


def test_shared_flags_have_timm_defaults():
    ours = vars(build_parser().parse_args(['d']))
    timm_defaults = _timm_train_defaults()
    checked = 0
    for key, value in timm_defaults.items():
        dest = ALIASES.get(key, key)
        if dest not in ours or key in DIFFERENT or key in ('opt_kwargs', 'drop_connect'):
            continue
        assert ours[dest] == value, f'{key}: ours {ours[dest]!r}, timm {value!r}'
        checked += 1
    assert checked > 100
    missing = [k for k in timm_defaults if ALIASES.get(k, k) not in ours]
    assert not missing, f'timm train.py keys unknown here: {missing}'


@pytest.mark.parametrize('argv,flag', [(['--log-wandb'], "'--log-wandb'"), (['--aug-splits', '3'], "'--aug-splits'"),
                                       (['--torchscript'], "'--torchscript'")])
def test_unsupported_timm_flag_is_one_line(tmp_path, capsys, argv, flag):
    assert main([str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err and 'not supported' in err, err


def _write_args_yaml(path: pathlib.Path, **changes) -> str:
    cfg = _timm_train_defaults()
    cfg.update(changes)
    path.write_text(yaml.safe_dump(cfg, default_flow_style=False))  # as timm's train.py writes it
    return str(path)


def test_timm_args_yaml_is_read(tmp_path):
    path = _write_args_yaml(tmp_path / 'args.yaml', opt='adamw', lr=4e-3, opt_kwargs={'foo': 2},
                            recovery_interval=7, device='cpu', model='vitzoo_shvit_s1')
    a = parse_args(['--config', path, str(tmp_path)])
    assert (a.opt, a.lr, a.opt_args, a.checkpoint_interval, a.model) == ('adamw', 4e-3, {'foo': 2}, 7, 'vitzoo_shvit_s1')
    assert a.weight_decay == 2e-5 and a.checkpoint_hist == 10 and a.drop == 0.0


def test_timm_args_yaml_unsupported_non_default_is_one_line(tmp_path, capsys):
    path = _write_args_yaml(tmp_path / 'args.yaml', log_wandb=True)
    assert main(['--config', path, str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'--log-wandb' is not supported" in err, err


def test_sync_bn_converts_under_ddp_and_is_a_noted_noop_on_one_process(caplog):
    model = timm.create_model('test_resnet', num_classes=3)
    args = parse_args(['d', '--sync-bn'])
    args.distributed, args.fsdp = False, False
    with caplog.at_level(logging.INFO, logger='train'):
        assert apply_sync_bn(model, args, torch.device('cpu'), True) is model
    assert 'one process' in caplog.text
    args.distributed = True
    with pytest.raises(ConfigError, match='needs accelerator devices'):
        apply_sync_bn(model, args, torch.device('cpu'), True)
    converted = apply_sync_bn(model, args, torch.device('cuda'), True)  # conversion itself needs no GPU
    assert any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) and args.dist_bn == ''
    args.fsdp = True
    with pytest.raises(ConfigError, match='fsdp'):
        apply_sync_bn(model, args, torch.device('cuda'), True)


def test_distilled_head_returns_pair_and_hard_loss_matches_deit():
    student = timm.create_model('vitzoo_efficientvit_m0', num_classes=3, distillation=True).train()
    student.set_distilled_training(True)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])
    cls, dist = student(x)
    assert cls.shape == dist.shape == (2, 3) and not torch.equal(cls, dist)
    teacher = nn.Sequential(nn.Flatten(), nn.LazyLinear(3))
    teacher(x)
    loss_fn = distill.DistillationLoss(nn.CrossEntropyLoss(), teacher, 'hard', alpha=0.5)
    t = teacher(x)
    want = 0.5 * nn.functional.cross_entropy(cls, y) + 0.5 * nn.functional.cross_entropy(dist, t.argmax(1))
    assert torch.allclose(loss_fn((cls, dist), y, x), want)
    assert torch.allclose(distill.DistillationLoss(nn.CrossEntropyLoss(), teacher, 'none')((cls, dist), y, x),
                          nn.functional.cross_entropy(cls, y))
    tau = 2.0
    soft = distill.DistillationLoss(nn.CrossEntropyLoss(), teacher, 'soft', alpha=0.3, tau=tau)((cls, dist), y, x)
    p_t = (t / tau).softmax(1)
    kl = (p_t * ((t / tau).log_softmax(1) - (dist / tau).log_softmax(1))).sum() * tau * tau / dist.numel()
    assert torch.allclose(soft, 0.7 * nn.functional.cross_entropy(cls, y) + 0.3 * kl, atol=1e-6)


def test_timm_extras_train_one_epoch(tmp_path):
    """BCE loss, head init, lr noise and cycles, timm's lr rule (sqrt for adamw) in one short run."""
    import vitzoo.cli.train as cli_train
    data = make_folder(tmp_path / 'data', classes=3, n_train=2, n_val=1, size=32)
    res = cli_train.train([data, '--model', 'test_convnext', '--img-size', '32', '-b', '6', '--epochs', '1',
                           '--warmup-epochs', '0', '--workers', '0', '--no-progress', '--threads', '1',
                           '--opt', 'adamw', '--lr-base', '1e-3', '--lr-base-size', '24', '--bce-loss',
                           '--bce-target-thresh', '0.2', '--head-init-scale', '0.5', '--head-init-bias', '0.1',
                           '--lr-noise', '0.5', '--lr-cycle-limit', '2', '--output', str(tmp_path / 'o')])
    assert res['train']['loss'] > 0
    saved = yaml.safe_load((pathlib.Path(res['output_dir']) / 'args.yaml').read_text())
    assert saved['lr'] == pytest.approx(1e-3 * (6 / 24) ** 0.5) and saved['lr_base_scale'] == 'sqrt'


def test_distillation_trains_one_step_from_a_teacher_checkpoint(tmp_path, monkeypatch):
    calls = []
    real = distill.create_teacher

    def spy(*a, **kw):
        t = real(*a, **kw)
        t.register_forward_hook(lambda m, i, o: calls.append((m.training, i[0].shape)))
        return t
    monkeypatch.setattr(distill, 'create_teacher', spy)
    data = make_folder(tmp_path / 'data', classes=3, n_train=2, n_val=1, size=64)
    teacher = timm.create_model('test_convnext', num_classes=3)
    ckpt = tmp_path / 'teacher.pth'
    torch.save({'state_dict': teacher.state_dict()}, ckpt)
    out = tmp_path / 'out'
    rc = main([data, '--model', 'vitzoo_efficientvit_m0', '--model-kwargs', 'distillation=True', '--img-size', '64',
               '-b', '6', '--epochs', '1', '--warmup-epochs', '0', '--workers', '0', '--no-progress', '--lr', '1e-3',
               '--threads', '1', '--output', str(out), '--experiment', 'kd', '--distill-teacher', 'test_convnext',
               '--distill-checkpoint', str(ckpt), '--distill-type', 'hard'])
    assert rc == 0
    rows = (out / 'kd' / 'steps.csv').read_text().strip().splitlines()
    assert len(rows) == 2 and float(rows[1].split(',')[3]) > 0  # one step, a finite positive loss
    assert calls == [(False, (6, 3, 64, 64))]  # the teacher saw the step's batch, in eval mode
    bad = main([data, '--model', 'test_convnext', '--distill-teacher', 'test_convnext', '--output', str(out)])
    assert bad == 2  # a teacher without weights is refused


def test_head_init_flags_set_the_classifier():
    from vitzoo.cli.train import create_model_from_args
    args = parse_args(['d', '--model', 'test_convnext', '--head-init-scale', '0', '--head-init-bias', '0.25'])
    head = create_model_from_args(args, 3).get_classifier()
    assert torch.count_nonzero(head.weight) == 0 and torch.allclose(head.bias, torch.full((3,), 0.25))
