"""Registration: every zoo model lives under `vitzoo_`, in modules of its own, over no timm name."""
import os
import subprocess
import sys

import pytest
import timm

import vitzoo
from vitzoo.models import _registry


def test_import_with_warnings_as_errors_succeeds():
    """A timm registration overwritten would warn; turned into errors, the import must still pass."""
    env = dict(os.environ, PYTHONWARNINGS="error::UserWarning")
    res = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", "import vitzoo; print(len(vitzoo.list_models()))"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.strip()) == len(vitzoo.list_models())


def test_every_zoo_name_is_prefixed_and_listed():
    names = vitzoo.list_models()
    assert names, "no zoo model registered"
    assert all(n.startswith("vitzoo_") for n in names)
    assert set(names) == {n for n in timm.list_models() if n.startswith("vitzoo_")}
    # a pattern works with or without the prefix
    first = names[0][len("vitzoo_"):]
    assert vitzoo.list_models(first) == [names[0]]
    assert vitzoo.list_models("vitzoo_" + first) == [names[0]]


def test_zoo_module_names_do_not_coincide_with_timm():
    import pkgutil

    import timm.models as tm
    from vitzoo.models import FAMILY_MODULES
    timm_modules = {m.name for m in pkgutil.iter_modules(tm.__path__)}
    assert FAMILY_MODULES
    assert not set(FAMILY_MODULES) & timm_modules
    for name in vitzoo.list_models():
        assert timm.models._registry._model_to_module[name] in FAMILY_MODULES


def test_register_refuses_unprefixed_and_taken_names():
    def resnet18():
        pass

    with pytest.raises(ValueError, match="already registered|must start"):
        _registry.register_model(resnet18)

    def vitzoo_taken():
        pass

    name = vitzoo.list_models()[0]
    vitzoo_taken.__name__ = name
    with pytest.raises(ValueError, match="already registered"):
        _registry.register_model(vitzoo_taken)


def test_unknown_model_name_error_is_clear():
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model("vitzoo_does_not_exist")
