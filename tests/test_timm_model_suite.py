"""timm's own model test suite (`tests/test_models.py` of the installed timm) run on the zoo.

The test file is not in timm's wheel: it is taken from timm's source distribution for the
installed version (`pip download --no-deps --no-binary :all: timm==<version>`), cached under
`$VITZOO_CACHE` (default `~/.cache/vitzoo`), and skipped with the reason when it cannot be had.
Its generic test functions run on one model per zoo family (zoo_cases.REPRESENTATIVES, the
smallest of each). A failure counts only where timm's twin (the same architecture in timm, or
the closest one, `TWINS`) passes the same test: when the zoo model fails, the twin is run and,
if it fails too, the case is skipped naming the twin's error. timm's test sizes are used, except
the forward size (`TARGET_FWD_SIZE` 384 -> 128, like its backward/feature sizes) to bound runtime.

Our own contract checks (test_contract.py, test_conformance.py, test_timm_suite.py) stay: this
module is the independent check, timm's tests verbatim.
"""
import importlib.util
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile

import pytest
import timm
import torch
from zoo_cases import REPRESENTATIVES

import vitzoo  # noqa: F401  (registers the zoo)

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

#: zoo representative -> timm's model of the same architecture (same name), else the closest timm has
TWINS = {
    "vitzoo_swin_tiny_patch4_window7_224": "swin_tiny_patch4_window7_224",
    "vitzoo_poolformer_s12": "poolformer_s12",
    "vitzoo_poolformerv2_s12": "poolformerv2_s12",
    "vitzoo_convformer_s18": "convformer_s18",
    "vitzoo_caformer_s18": "caformer_s18",
    "vitzoo_nat_mini": "swin_tiny_patch4_window7_224",  # local attention pyramid, NHWC stages
    "vitzoo_dinat_mini": "swin_tiny_patch4_window7_224",
    "vitzoo_dinat_s_tiny": "swin_tiny_patch4_window7_224",
    "vitzoo_nat_isotropic_small": "swin_tiny_patch4_window7_224",
    "vitzoo_biformer_tiny": "swin_tiny_patch4_window7_224",  # sparse (routed) attention pyramid
    "vitzoo_efficientvit_m0": "efficientvit_m0",
    "vitzoo_shvit_s1": "shvit_s1",
    "vitzoo_spectformer_h_s": "cait_xxs24_224",  # class-attention head on patch tokens
    "vitzoo_spectformer_ti": "vit_small_patch16_224",  # ViT with an avg-pooled head, no CLS token
    "vitzoo_evit_deit_tiny_patch16_224": "deit_tiny_patch16_224",
    "vitzoo_crossvit_tiny_240": "crossvit_tiny_240",
}

#: timm's generic tests (name -> extra keyword arguments); each takes `model_name`
TESTS = {
    "test_model_forward": dict(batch_size=1),
    "test_model_backward": dict(batch_size=2),
    "test_model_default_cfgs": dict(batch_size=1, cfg_device="meta"),
    "test_model_default_cfgs_non_std": dict(batch_size=1, cfg_device="meta"),
    "test_model_forward_features": dict(batch_size=1),
    "test_model_forward_intermediates_features": dict(batch_size=1),
    "test_model_forward_intermediates": dict(batch_size=1),
    "test_prune_intermediate_layers_params_used": {},
    "test_reset_classifier_keeps_pool": {},
    "test_features_only_grad_checkpointing_backward": {},
    "test_model_init_weights_after_to_empty": dict(kwargs={}),
}
#: the TorchScript / FX tests (slow; our own versions run in test_timm_suite.py)
SLOW_TESTS = {
    "test_model_forward_torchscript": dict(batch_size=1),
    "test_model_forward_fx": dict(batch_size=1),
    "test_model_backward_fx": dict(batch_size=1),
}

_CACHE = pathlib.Path(os.environ.get("VITZOO_CACHE", pathlib.Path.home() / ".cache" / "vitzoo"))


def _fetch_test_file(version: str) -> pathlib.Path:
    """timm's tests/test_models.py for `version`, from the cache or timm's sdist; skip if unreachable."""
    dest = _CACHE / f"timm-{version}" / "test_models.py"
    if dest.exists():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               "--disable-pip-version-check", "-d", tmp, f"timm=={version}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            pytest.skip(f"timm {version}'s source distribution did not download in 180 s (package index unreachable?)")
        sdists = list(pathlib.Path(tmp).glob("timm-*.tar.gz"))
        if proc.returncode or not sdists:
            pytest.skip(f"cannot fetch timm {version}'s source distribution for its test suite "
                        f"(package index unreachable?): {proc.stderr.strip()[-300:]}")
        with tarfile.open(sdists[0]) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("/tests/test_models.py")), None)
            if member is None:
                pytest.skip(f"timm {version}'s source distribution has no tests/test_models.py")
            data = tar.extractfile(member).read()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_dest = dest.with_suffix(".tmp")
    tmp_dest.write_bytes(data)
    tmp_dest.replace(dest)
    return dest


@pytest.fixture(scope="module")
def timm_tests():
    """timm's test module, imported once (its import-time JIT executor setting is undone afterwards)."""
    path = _fetch_test_file(timm.__version__)
    profiling = torch._C._jit_set_profiling_mode(True)
    executor = torch._C._jit_set_profiling_executor(True)
    try:
        spec = importlib.util.spec_from_file_location("timm_test_models", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        torch._C._jit_set_profiling_mode(profiling)
        torch._C._jit_set_profiling_executor(executor)
    module.TARGET_FWD_SIZE = 128  # timm's forward size is 384 (its CI's budget, not ours)
    return module


def _applies(test_name: str, zoo_name: str) -> bool:
    """timm runs the default-cfg test in its 'standard' form, or the 'non-standard' one for ViT-like
    models (its NON_STD_FILTERS); the zoo's token models take the non-standard form, like their twins."""
    from zoo_cases import TOKEN_MODELS
    if test_name == "test_model_default_cfgs":
        return zoo_name not in TOKEN_MODELS
    if test_name == "test_model_default_cfgs_non_std":
        return zoo_name in TOKEN_MODELS
    return True


def _run(module, test_name: str, zoo_name: str, kwargs: dict) -> None:
    fn = getattr(module, test_name, None)
    if fn is None:
        pytest.skip(f"timm {timm.__version__}'s test_models.py has no {test_name}")
    torch.manual_seed(0)
    try:
        fn(model_name=zoo_name, **kwargs)
    except pytest.skip.Exception:
        raise
    except Exception as zoo_error:  # noqa: BLE001  (judge it against the twin)
        twin = TWINS[zoo_name]
        torch.manual_seed(0)
        try:
            fn(model_name=twin, **kwargs)
        except pytest.skip.Exception as e:
            pytest.skip(f"timm skips {test_name} on the twin {twin}: {e}")
        except Exception as twin_error:  # noqa: BLE001
            pytest.skip(f"timm's twin {twin} fails {test_name} too ({type(twin_error).__name__}: "
                        f"{str(twin_error)[:200]})")
        raise AssertionError(f"{zoo_name} fails timm's {test_name}, which timm's twin {twin} passes: "
                             f"{type(zoo_error).__name__}: {zoo_error}") from zoo_error


#: timm's tests written for a few named timm models, run on zoo models whose twin passes them (the twin named)
NAMED_MODEL_TESTS = {
    # timm's CrossViT takes any input size (each branch rescales the image): so does the zoo's
    "test_forward_after_prune_intermediate_layers": {"vitzoo_crossvit_9_240": "crossvit_9_240"},
}


def _cases(tests: dict) -> list:
    return [pytest.param(t, n, id=f"{t}-{n}") for t in tests for n in REPRESENTATIVES if _applies(t, n)]


def test_every_representative_has_a_twin():
    assert set(TWINS) == set(REPRESENTATIVES)
    missing = [t for t in TWINS.values() if t not in timm.list_models()]
    assert not missing, f"twins not in timm {timm.__version__}: {missing}"


@pytest.mark.parametrize("test_name, zoo_name", _cases(TESTS))
def test_timm_suite(timm_tests, test_name, zoo_name):
    _run(timm_tests, test_name, zoo_name, TESTS[test_name])


@pytest.mark.slow
@pytest.mark.parametrize("test_name, zoo_name", _cases(SLOW_TESTS))
def test_timm_suite_script_and_fx(timm_tests, test_name, zoo_name):
    _run(timm_tests, test_name, zoo_name, SLOW_TESTS[test_name])


@pytest.mark.parametrize("test_name, zoo_name", [
    pytest.param(t, n, id=f"{t}-{n}") for t, models in NAMED_MODEL_TESTS.items() for n in models])
def test_timm_named_model_tests(timm_tests, test_name, zoo_name):
    """No twin fallback here: the twin passes these (checked in the same test), so the zoo model must."""
    fn = getattr(timm_tests, test_name, None)
    if fn is None:
        pytest.skip(f"timm {timm.__version__}'s test_models.py has no {test_name}")
    twin = NAMED_MODEL_TESTS[test_name][zoo_name]
    torch.manual_seed(0)
    fn(model_name=twin)
    torch.manual_seed(0)
    fn(model_name=zoo_name)
