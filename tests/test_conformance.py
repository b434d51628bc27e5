"""timm conformance beyond the basic contract (issue 12): pruning, classifier resets, meta init,
features_only grad checkpointing and stop_early, on one representative per architecture.

Each check is what timm's own models do (timm's twin of each family passes it): a feature
extractor built by pruning leaves no parameter without a gradient (DDP), a pruned model's head
and norms fit the new width, `reset_classifier` keeps the pool and builds on the model's
device/dtype, `init_weights()` after a meta build gives a normal model, and so on.
"""
import pytest
import timm
import torch
from timm.models._features import feature_take_indices
from zoo_cases import REPRESENTATIVES, TARGET_FEAT_SIZE, input_size, seeded_input

import vitzoo  # noqa: F401  (registers the zoo)

pytestmark = pytest.mark.usefixtures("one_thread")


def _feat_input(name: str, batch: int = 1) -> torch.Tensor:
    return seeded_input(input_size(name, TARGET_FEAT_SIZE), batch)


def _num_taps(model: torch.nn.Module) -> int:
    return len(model.feature_info)


def _early_index(model: torch.nn.Module) -> int:
    """A tap before the last one: the second-to-last stage of a pyramid, an early block otherwise."""
    n = _num_taps(model)
    return n - 2 if n <= 4 else 1


def _outputs_sum(out) -> torch.Tensor:
    if isinstance(out, (list, tuple)):
        return sum(o.float().square().mean() for o in out)
    return out.float().square().mean()


# ---- pruning -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_features_only_leaves_no_parameter_without_gradient(name):
    """features_only prunes with the head: every parameter left must take a gradient (DDP)."""
    model = timm.create_model(name, features_only=True).train()
    outs = model(_feat_input(name, 2))
    _outputs_sum(outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:6]} ({len(missing)} in all)"


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_pruned_to_an_earlier_tap_forwards_and_pools(name):
    """Cut after an early tap (keeping the head): forward_features works at the new width, and
    after `reset_classifier(0, 'avg')` the model returns pooled features of that width."""
    model = timm.create_model(name).eval()
    idx = _early_index(model)
    model.prune_intermediate_layers([idx], prune_head=False)
    x = _feat_input(name) if name not in ("vitzoo_evit_deit_tiny_patch16_224", "vitzoo_crossvit_tiny_240") \
        else seeded_input(input_size(name, None), 1)
    with torch.no_grad():
        model.forward_features(x)
        model.reset_classifier(0, "avg")
        pooled = model(x)
        assert pooled.shape == (1, model.num_features), (pooled.shape, model.num_features)
        model.reset_classifier(5)
        assert model(x).shape == (1, 5)
    model.train()
    model(torch.cat([x, x.flip(-1)])).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:6]}"


# ---- reset_classifier --------------------------------------------------------------------------
@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_reset_classifier_to_zero_and_back_keeps_the_pool(name):
    model = timm.create_model(name).eval()
    x = seeded_input(input_size(name), 1)
    model.reset_classifier(0)
    model.reset_classifier(2)
    with torch.no_grad():
        assert model(x).shape == (1, 2)


#: heads that classify pooled features only, so a classifier brings its pool back
_POOL_RESTORING = {"vitzoo_poolformer_s12", "vitzoo_poolformerv2_s12", "vitzoo_convformer_s18", "vitzoo_caformer_s18",
                   "vitzoo_efficientvit_m0", "vitzoo_shvit_s1"}


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_reset_classifier_after_an_unpooled_head_and_train_mode(name):
    """timm's default-cfg sequence: (0, '') then (0) then (2) builds a classifier again (MetaFormer, EfficientViT,
    SHViT: on their last pool; others, like timm, on the unpooled output); new layers follow eval mode."""
    model = timm.create_model(name).eval()
    x = seeded_input(input_size(name), 1)
    model.reset_classifier(0, "")
    model.reset_classifier(0)
    model.reset_classifier(2)
    assert all(not m.training for m in model.modules()), "a new head layer is in training mode"
    if name in _POOL_RESTORING:
        with torch.no_grad():
            assert model(x).shape == (1, 2)


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_reset_classifier_builds_on_the_model_device_and_dtype(name):
    model = timm.create_model(name).to(torch.float64)
    model.reset_classifier(3)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    model = timm.create_model(name, device="meta")
    model.reset_classifier(3)
    assert {p.device.type for p in model.parameters()} == {"meta"}


# ---- init_weights --------------------------------------------------------------------------------
def _all_tensors(model: torch.nn.Module) -> dict:
    out = dict(model.named_parameters())
    out.update(model.named_buffers())
    return out


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_init_weights_after_meta_build_matches_a_normal_build(name):
    """meta build -> to_empty() -> init_weights(): finite weights with the normal build's init
    statistics; constant tensors (norm weights/biases, zero inits) and index buffers exactly equal."""
    torch.manual_seed(0)
    ref = _all_tensors(timm.create_model(name))
    model = timm.create_model(name, device="meta")
    model.to_empty(device="cpu")
    for t in _all_tensors(model).values():  # garbage in every tensor, as to_empty may leave
        with torch.no_grad():
            t.copy_(torch.full_like(t, 7) if not t.is_floating_point() else torch.full_like(t, float("nan")))
    torch.manual_seed(1)
    model.init_weights()
    got = _all_tensors(model)
    assert got.keys() == ref.keys()
    for k, r in ref.items():
        g = got[k]
        if not r.is_floating_point():
            assert torch.equal(g, r), f"{name}: buffer {k} not recomputed"
            continue
        assert torch.isfinite(g).all(), f"{name}: {k} not finite after init_weights"
        if r.numel() < 2 or r.std() == 0:
            assert torch.equal(g, r), f"{name}: {k} should be {r.flatten()[:3]}..., got {g.flatten()[:3]}..."
            continue
        if r.numel() >= 64:
            ratio = (g.float().std() / r.float().std()).item()
            assert 0.8 < ratio < 1.25, f"{name}: {k} std {g.std():.4g} vs normal build {r.std():.4g}"
            # two independent draws: their means differ by ~sqrt(2) std / sqrt(n)
            assert abs(g.mean() - r.mean()) < 6 * r.std() / r.numel() ** 0.5 + 1e-3, f"{name}: {k} mean"


# ---- features_only: grad checkpointing, stop_early ------------------------------------------------
@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_features_only_grad_checkpointing_gives_the_same_gradients(name):
    model = timm.create_model(name, features_only=True).eval()
    x = _feat_input(name, 2)

    def grads():
        model.zero_grad(set_to_none=True)
        _outputs_sum(model(x)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref = grads()
    model.set_grad_checkpointing(True)
    assert model.grad_checkpointing
    got = grads()
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_stop_early_gives_the_full_calls_taps(name):
    model = timm.create_model(name).eval()
    x = _feat_input(name) if name not in ("vitzoo_evit_deit_tiny_patch16_224", "vitzoo_crossvit_tiny_240") \
        else seeded_input(input_size(name, None), 1)
    n = _num_taps(model)
    indices = sorted({0, _early_index(model)})
    take, _ = feature_take_indices(n, indices)
    with torch.no_grad():
        _, full = model.forward_intermediates(x, indices=indices)
        early = model.forward_intermediates(x, indices=indices, stop_early=True, intermediates_only=True)
    assert len(full) == len(early) == len(take)
    for a, b in zip(full, early):
        torch.testing.assert_close(b, a)


# ---- EViT: dense maps although blocks drop tokens ---------------------------------------------------
def test_evit_intermediates_are_dense_maps_with_tokens_at_their_cells():
    """Kept tokens at their grid cells; a dropped token keeps its value at the drop (checked on block 3,
    the first reorganising one, against its TokenReorg's own input and ranking)."""
    torch.manual_seed(0)
    model = timm.create_model("vitzoo_evit_deit_tiny_patch16_224", depth=5, token_reorg_locs=(3,)).eval()
    seen = {}
    reorg = model.blocks[3].token_reorg
    select = reorg.forward_with_index

    def recording(tokens, attn):
        seen.update(x=tokens, attn=attn)
        return select(tokens, attn)
    reorg.forward_with_index = recording
    model.blocks[3].register_forward_hook(lambda m, args, out: seen.update(out=out))
    x = seeded_input((3, 224, 224), 2)
    with torch.no_grad():
        maps = model.forward_intermediates(x, indices=[2, 3, 4], intermediates_only=True)
        nlc = model.forward_intermediates(x, indices=[2, 3], output_fmt="NLC", intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(2, 192, 14, 14)] * 3
    torch.testing.assert_close(maps[0].flatten(2).transpose(1, 2), nlc[0])  # before any drop: the tokens
    assert nlc[1].shape[1] < 196  # NLC keeps the reorganised sequence
    cells = maps[1].flatten(2).transpose(1, 2)  # [B, 196, C]
    keep = model.blocks[3].token_reorg.num_kept(196)
    idx = seen["attn"][:, 1:].topk(keep, dim=1).indices
    for b in range(2):
        kept = torch.zeros(196, dtype=torch.bool)
        kept[idx[b]] = True
        torch.testing.assert_close(cells[b, idx[b]], seen["out"][b, 1:1 + keep])
        torch.testing.assert_close(cells[b, ~kept], seen["x"][b, 1:][~kept])
    feats = timm.create_model("vitzoo_evit_deit_tiny_patch16_224", features_only=True, out_indices=(3, 7, 11)).eval()
    with torch.no_grad():
        assert [tuple(o.shape) for o in feats(x)] == [(2, 192, 14, 14)] * 3


# ---- DDP on a features_only backbone ---------------------------------------------------------------
def _ddp_worker(rank: int, world: int, init_file: str, name: str, kwargs: dict) -> None:
    import torch.distributed as dist
    import vitzoo  # noqa: F401  (registers the zoo in the spawned process)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = timm.create_model(name, features_only=True, **kwargs)
        ddp = torch.nn.parallel.DistributedDataParallel(model)  # find_unused_parameters=False: DDP's strict mode
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(rank))
        for _ in range(2):  # an unused parameter makes the second step raise
            ddp.zero_grad()
            _outputs_sum(ddp(x)).backward()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~1 min on 2 cores; the gradient check above is the fast proxy
@pytest.mark.parametrize("name, kwargs", [
    ("vitzoo_caformer_s18", dict(depths=(1, 1, 1, 1))),
    ("vitzoo_spectformer_h_s", dict(depths=(1, 1, 1, 1), img_size=64)),
])
def test_features_only_backbone_trains_under_ddp(name, kwargs, tmp_path):
    """Two gloo processes, DDP without find_unused_parameters, two steps (the check timm's pruning is for)."""
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), name, kwargs), nprocs=2, join=True)
