"""The shared base on a toy pyramid: the contract works before any family uses it."""
import pytest
import torch
import torch.nn as nn
from timm.layers import ClassifierHead, Mlp

from vitzoo.layers import MetaFormerBlock, Stage
from vitzoo.models import HierarchicalBackbone


class ToyNet(HierarchicalBackbone):
    output_fmt = "NHWC"
    no_weight_decay_keys = ("gain",)

    def __init__(self, in_chans=3, num_classes=10, global_pool="avg", dims=(8, 16, 24, 32)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, 4))
        self.gain = nn.Parameter(torch.ones(1))
        stages = []
        for i, d in enumerate(dims):
            blk = MetaFormerBlock(d, nn.Linear(d, d), Mlp(d, 2 * d), layer_scale_init_value=1e-5)
            stages.append(Stage([blk], _Down(dims[i - 1], d) if i else None))
        self.stem.append(_ToNHWC())
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1])
        self.head = ClassifierHead(dims[-1], num_classes, global_pool, input_fmt="NHWC")
        self.init_contract(in_chans=in_chans, num_classes=num_classes, global_pool=global_pool,
                           dims=dims, reductions=(4, 8, 16, 32))


class _ToNHWC(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


class _Down(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, 2, 2)

    def forward(self, x):
        return self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def test_forward_and_intermediates():
    m = ToyNet().eval()
    x = torch.randn(2, 3, 64, 64)
    y = m(x)
    assert y.shape == (2, 10)
    final, inter = m.forward_intermediates(x)
    assert [t.shape for t in inter] == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 24, 4, 4), (2, 32, 2, 2)]
    torch.testing.assert_close(m.forward_head(final), y)
    only = m.forward_intermediates(x, indices=[1], intermediates_only=True, output_fmt="NHWC")
    assert only[0].shape == (2, 8, 8, 16)
    assert m.forward_head(m.forward_features(x), pre_logits=True).shape == (2, 32)


def test_meta_device_and_dtype():
    m = ToyNet(device="meta")
    assert all(t.device.type == "meta" for t in list(m.parameters()) + list(m.buffers()))
    m = ToyNet(dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters())
    assert torch.get_default_dtype() == torch.float32
    m.reset_classifier(3)
    assert m.get_classifier().weight.dtype == torch.float64


def test_unknown_kwarg_raises_type_error():
    with pytest.raises(TypeError):
        ToyNet(not_an_arg=1)


def test_reset_classifier_keeps_pool_and_prune():
    m = ToyNet()
    m.reset_classifier(0)
    assert m.global_pool == "avg"
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 32)
    idx = m.prune_intermediate_layers([0, 1])
    assert idx == [0, 1] and len(m.stages) == 2


def test_bad_input_errors_name_the_problem():
    m = ToyNet()
    with pytest.raises(ValueError, match="3 input channels"):
        m(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="divisible by 32"):
        m(torch.randn(1, 3, 60, 64))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        m(torch.randn(3, 64, 64))


def test_no_weight_decay_and_grad_checkpointing():
    m = ToyNet()
    assert m.no_weight_decay() == {"gain"}
    m.set_grad_checkpointing(True)
    assert all(s.grad_checkpointing for s in m.stages)
    m.train()
    m(torch.randn(1, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad and p is not m.gain)


def test_group_matcher_covers_every_parameter():
    from timm.models import group_parameters
    m = ToyNet()
    groups = group_parameters(m, m.group_matcher())
    assert sum(len(v) for v in groups.values()) == len(list(m.parameters()))
