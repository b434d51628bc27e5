"""vitzoo: modern vision backbones in timm's registry, on shared blocks and fused kernels.

`import vitzoo` registers every zoo model; then `timm.create_model("vitzoo_...")` builds it.
"""
import importlib.util as _importlib_util
import os as _os
import sys as _sys


def _mount_source_kernels() -> None:
    """Make ``vitzoo.kernels`` the repository's top-level ``kernels/`` folder in a source checkout.

    A wheel installs that folder as ``vitzoo/kernels`` (pyproject's ``package-dir``); a plain
    checkout (``PYTHONPATH=.``) or an editable install has it beside ``vitzoo/`` instead.
    """
    here = _os.path.dirname(_os.path.abspath(__file__))
    if _os.path.isdir(_os.path.join(here, "kernels")) or "vitzoo.kernels" in _sys.modules:
        return
    source = _os.path.join(_os.path.dirname(here), "kernels")
    init = _os.path.join(source, "__init__.py")
    if not _os.path.isfile(init):
        return
    spec = _importlib_util.spec_from_file_location("vitzoo.kernels", init,
                                                   submodule_search_locations=[source])
    module = _importlib_util.module_from_spec(spec)
    _sys.modules["vitzoo.kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del _sys.modules["vitzoo.kernels"]
        raise
    globals()["kernels"] = module


_mount_source_kernels()

from . import models  # noqa: E402,F401  (registers the zoo in timm)
from .models._registry import list_models  # noqa: E402

__version__ = "0.1.0"
__all__ = ["list_models", "__version__"]
