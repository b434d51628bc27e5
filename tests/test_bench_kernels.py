"""tools/bench_kernels.py on CPU: the per-op plugin driver, and the --model-step FlexAttention swap.

Op level: modules in tools/kernel_bench/ are discovered, run, their rows normalised and written
to JSON + markdown; a missing module is skipped, a raising one is an error row and exit 1.
Model level: FlexAttention runs forward-only on CPU (eager), so the swap is checked end to end at
the logits; its training path on CPU goes through `flex_dense_emulation` (the same mask/score
mods, dense), whose outputs and gradients are checked against na2d's reference here.
"""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from vitzoo.kernels import na_reference

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("torch.nn.attention.flex_attention")

# A two-stage DiNAT (the NAT class with DiNAT's alternating dilations), 3x3 neighbourhoods: at 32px
# the maps are 8x8 and 4x4, so the dilated blocks (window 12 and 6) exercise the padding path too.
TINY = dict(depths=[2, 2], num_heads=[2, 4], embed_dim=32, kernel_size=3,
            dilations=[[1, 4], [1, 2]])
TINY_ARGS = ["--model", "vitzoo_dinat_mini", "--model-kwargs", json.dumps(TINY), "--img-size", "32"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_kernels_model_step",
                                                  ROOT / "tools" / "bench_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny(bench):
    return bench.build_model("vitzoo_dinat_mini", **TINY)


def test_swap_replaces_every_mixer_and_shares_weights(bench, tiny):
    from vitzoo.layers.neighborhood_attention import NeighborhoodAttention2D
    model = copy.deepcopy(tiny)
    mixers = {n: m for n, m in model.named_modules() if isinstance(m, NeighborhoodAttention2D)}
    keys = list(model.state_dict())
    assert bench.swap_to_flex(model) == len(mixers) == 4
    assert not any(isinstance(m, NeighborhoodAttention2D) for m in model.modules())
    assert list(model.state_dict()) == keys  # same names: same optimizer groups, same checkpoints
    for name, old in mixers.items():
        new = model.get_submodule(name)
        assert isinstance(new, bench.FlexNeighborhoodAttention2D)
        assert new.qkv is old.qkv and new.rpb is old.rpb and new.proj is old.proj
        assert ((new.kernel_size, new.dilation, new.scale)
                == (old.kernel_size, old.dilation, old.scale))


def test_flex_swapped_model_matches_vitzoo(bench, tiny):
    """The guard the benchmark runs before timing: real flex_attention (eager on CPU) vs na2d."""
    diff = bench.check_flex_model(tiny, 32, "cpu", "reference", compile_attention=False, batch=2)
    assert 0 <= diff <= 1e-4


def test_guard_aborts_on_a_wrong_neighbourhood(bench, tiny, monkeypatch):
    right = bench._neighbourhood_mods
    # a mask that ignores the dilation: the logits change and the guard must refuse to time
    monkeypatch.setattr(bench, "_neighbourhood_mods",
                        lambda H, W, k, dil, rpb: right(H, W, k, 1, rpb))
    monkeypatch.setattr(bench, "_BLOCK_MASKS", {})
    # dense emulation instead of eager flex_attention (which recompiles per mask: slow on CPU)
    monkeypatch.setattr(bench, "flex_attention_fn", lambda compiled: bench.flex_dense_emulation)
    with pytest.raises(RuntimeError, match="disagrees with the vitzoo model"):
        bench.check_flex_model(tiny, 32, "cpu", "reference", compile_attention=False, batch=1)


@pytest.mark.parametrize("H,W,k,dil", [(7, 9, 3, 2), (6, 6, 5, 1)])
def test_dense_emulation_matches_na2d_with_grads(bench, H, W, k, dil):
    from torch.nn.attention.flex_attention import create_block_mask
    gen = torch.Generator().manual_seed(0)
    heads, d = 2, 8
    q, kk, v = (torch.randn(1, H, W, heads, d, generator=gen).requires_grad_() for _ in range(3))
    rpb = (0.5 * torch.randn(heads, 2 * k - 1, 2 * k - 1, generator=gen)).requires_grad_()
    mask_mod, score_mod = bench._neighbourhood_mods(H, W, k, dil, rpb)
    block_mask = create_block_mask(mask_mod, None, None, H * W, H * W, device="cpu")

    def heads_first(x):
        return x.reshape(1, H * W, heads, d).transpose(1, 2)

    out = bench.flex_dense_emulation(heads_first(q), heads_first(kk), heads_first(v),
                                     score_mod=score_mod, block_mask=block_mask, scale=0.3)
    out = out.transpose(1, 2).reshape(q.shape)
    want = na_reference(q, kk, v, k, dil, rpb=rpb, scale=0.3)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    g = torch.randn(q.shape, generator=gen)
    got_grads = torch.autograd.grad(out, (q, kk, v, rpb), g)
    want_grads = torch.autograd.grad(want, (q, kk, v, rpb), g)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_swapped_model_training_gradients_match(bench, tiny):
    """One loss.backward() through the swapped model (dense emulation) == through na2d."""
    vit, flex = copy.deepcopy(tiny).train(), copy.deepcopy(tiny).train()
    bench.swap_to_flex(flex, attn_fn=bench.flex_dense_emulation)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([1, 7])
    for m in (vit, flex):
        torch.manual_seed(0)  # same drop-path draws
        torch.nn.functional.cross_entropy(m(x), y).backward()
    grads = dict(flex.named_parameters())
    for name, p in vit.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert any("rpb" in n and p.grad.abs().sum() > 0 for n, p in flex.named_parameters())


def test_model_step_cpu_end_to_end(bench, tmp_path):
    args = ["--model-step", "--allow-cpu", "--quick", *TINY_ARGS, "--batch", "2",
            "--reps", "1", "--warmup", "1", "--out-dir", str(tmp_path)]
    assert bench.main(args) == 0
    (js,), (md,) = list(tmp_path.glob("*.json")), list(tmp_path.glob("*.md"))
    data = json.loads(js.read_text())
    assert data["mode"] == "model-step" and data["model"] == "vitzoo_dinat_mini"
    assert data["device"] == "cpu" and data["torch"] == torch.__version__
    assert "--model-step" in data["command"] and data["batch"] == 2 and data["img_size"] == 32
    assert 0 <= data["check_max_abs_diff"] <= 1e-4
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"vitzoo", "flex"}
    for r in rows.values():
        assert "error" not in r and r["ms_per_step"] > 0 and r["loss_finite"]
    assert rows["flex"]["kernels"].startswith("flex mods")  # CPU: the dense emulation
    assert data["ratios"]["flex/vitzoo"] == pytest.approx(
        rows["flex"]["ms_per_step"] / rows["vitzoo"]["ms_per_step"], rel=1e-2)
    text = md.read_text()
    assert "training step" in text and "| vitzoo |" in text and "flex/vitzoo" in text


def test_model_step_rejects_unknown_variant(bench, tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        bench.main(["--model-step", "--allow-cpu", *TINY_ARGS, "--model-variants", "vitzoo,nope",
                    "--out-dir", str(tmp_path)])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
@pytest.mark.parametrize("extra", [[], ["--model-step"]])
def test_cuda_without_gpu_fails_with_one_line(bench, tmp_path, capsys, extra):
    assert bench.main([*extra, "--out-dir", str(tmp_path / "none")]) == bench.NO_GPU_EXIT != 0
    captured = capsys.readouterr()
    assert "no GPU" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_cuda_without_gpu_exit_code_from_the_shell(tmp_path):
    """`make bench` must not look green without a GPU: the script's process exit is non-zero."""
    import subprocess
    import sys
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_kernels.py"), "--out-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "no GPU" in res.stderr and "Traceback" not in res.stderr


# ---- op level: the tools/kernel_bench/ plugin contract ------------------------------------------
def test_neighborhood_op_is_discovered(bench):
    kb = bench.kernel_bench
    assert "neighborhood" in kb.available_ops() and "_timing" not in kb.available_ops()
    assert kb.select("all") == kb.available_ops()
    assert kb.select("neighborhood, window") == ["neighborhood", "window"]
    mod = kb.load("neighborhood")
    assert mod.OP == "neighborhood" and callable(mod.run)
    assert kb.load("no_such_op") is None


def test_ops_cpu_smoke(bench, tmp_path):
    assert bench.main(["--allow-cpu", "--quick", "--ops", "neighborhood",
                       "--out-dir", str(tmp_path)]) == 0
    (js,), (md,) = list(tmp_path.glob("kernels_cpu_*.json")), list(tmp_path.glob("*.md"))
    data = json.loads(js.read_text())
    assert data["device"] == "cpu" and data["torch"] == torch.__version__ and data["command"]
    assert data["ops"] == ["neighborhood"] and data["dtype"] == "float32"
    rows = data["rows"]
    assert {r["impl"] for r in rows} == {"reference", "sdpa"}  # no compiler on CPU
    assert {r["dilation"] for r in rows} == {1, 2}
    for r in rows:
        assert set(bench.kernel_bench.REQUIRED_KEYS) <= set(r) and r["op"] == "neighborhood"
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["peak_mem_mb"] is None
    text = md.read_text()
    assert "## neighborhood" in text and "| reference |" in text


class _FakeOp:
    OP = "fake"

    def __init__(self, rows=None, exc=None):
        self.rows, self.exc, self.calls = rows, exc, []

    def run(self, device, dtype, quick):
        self.calls.append((device, dtype, quick))
        if self.exc:
            raise self.exc
        return self.rows


def test_plugins_rows_are_normalised_and_missing_ops_skipped(bench, tmp_path, monkeypatch, capsys):
    good = _FakeOp(rows=[dict(case="c1", impl="mine", fwd_ms=1.0, fwd_bwd_ms=2.0,
                              ratio_vs="other", speedup=1.5)])
    mods = {"good": good}
    monkeypatch.setattr(bench.kernel_bench, "load", lambda name: mods.get(name))
    rows, ran, skipped = bench.run_ops(["good", "window"], "cpu", torch.float32, True,
                                       impls=["x"])  # options run() does not accept are dropped
    assert good.calls == [("cpu", torch.float32, True)]
    assert ran == ["good"] and skipped == ["window"]
    assert "skipped op 'window'" in capsys.readouterr().out
    (row,) = rows
    assert row["op"] == "fake" and row["peak_mem_mb"] is None and row["speedup"] == 1.5
    text = bench.ops_markdown(dict(device_name="cpu", date="d", torch="t", triton="tr",
                                   timm="ti", python="p", command="c", dtype="float32"), rows)
    assert "| c1 | mine | 1.000 | 2.000 | - | 1.50x vs other |" in text


def test_a_raising_op_is_an_error_row_and_exit_1(bench, tmp_path, monkeypatch):
    mods = {"bad": _FakeOp(exc=RuntimeError("boom")),
            "good": _FakeOp(rows=[dict(case="c", impl="i", fwd_ms=1.0, fwd_bwd_ms=None,
                                       peak_mem_mb=None)])}
    monkeypatch.setattr(bench.kernel_bench, "load", lambda name: mods.get(name))
    assert bench.main(["--device", "cpu", "--ops", "bad,good", "--out-dir", str(tmp_path)]) == 1
    (js,) = list(tmp_path.glob("*.json"))
    rows = json.loads(js.read_text())["rows"]
    assert [r["op"] for r in rows] == ["fake", "fake"]
    assert "RuntimeError: boom" in rows[0]["error"] and "error" not in rows[1]
    assert "Errors:" in next(tmp_path.glob("*.md")).read_text()


def test_plugin_returning_a_non_list_is_rejected(bench):
    with pytest.raises(TypeError, match="list of dicts"):
        bench.kernel_bench.normalise({"case": "x"}, "fake")
