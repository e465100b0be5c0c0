"""Domain-generalization methods: a registry (`METHODS`, `segbench methods`) and each method's layers as plain PyTorch.

The layers are usable in any network, like timm's: `InstanceWhitening` + `instance_whitening_loss` + `isw_mask`
(RobustNet's IW/IRW/ISW), `SwitchWhiten2d`, `MixStyle`, `DistributionUncertainty` (DSU), `NormalizationPerturbation`,
`pasta`. `base.Method` is the contract a method fulfils in a segbench study; `builtin.py` registers segbench's own.
"""
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from .base import (ENTRY_POINT_GROUP, METHODS, Batch, Method, MethodError, OptionError, TrainRun, build_method,
                   method_options)
from .dsu import DistributionUncertainty
from .mixstyle import MixStyle
from .pasta import PASTA, pasta
from .perturbation import NormalizationPerturbation
from .places import (OUTPUT_PLACES, insert_after, place_channels, place_module, replace_stem_norm, resnet_of,
                     set_post_add)
from .shade import (StyleHallucination, basis_styles, farthest_point_sampling, instance_style, retrospection_loss,
                    retrospection_mask, style_consistency_loss)
from .switchable import SwitchWhiten2d
from .whitening import CovarianceVariance, InstanceWhitening, covariance, instance_whitening_loss, isw_mask
from . import builtin  # noqa: F401  (registers segbench's methods)
from . import foundation  # noqa: F401  (registers the parameter-efficient methods for foundation models)

#: os.pathsep-separated modules (`my_lab.methods`) or Python files (`./my_method.py`) that register methods; an
#: environment variable, so the worker processes of every launcher import them too
PLUGINS_ENV = "SEGBENCH_METHODS"
_imported: dict[str, object] = {}


def _failure(where: str, e: BaseException) -> MethodError:
    """A plug-in that failed on import (a syntax error, a missing import, a method name already taken): one
    message naming the file or module, the error and the fix; `--debug` shows the traceback."""
    if isinstance(e, SyntaxError):
        what = f"SyntaxError at line {e.lineno}: {e.msg}"
    else:
        what = f"{type(e).__name__}: {e.args[0] if isinstance(e, KeyError) and e.args else e}"
    return MethodError(f"${PLUGINS_ENV}: importing {where} failed ({what}); fix it, or take it out of "
                       f"${PLUGINS_ENV}")


def _import_file_or_module(spec: str):
    if spec.endswith(".py"):
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise MethodError(f"${PLUGINS_ENV}: {path} does not exist; give a module name or the path of a .py file")
        module_spec = importlib.util.spec_from_file_location(f"segbench_method_plugin_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[module_spec.name]
            raise _failure(str(path), e) from e
        return module
    if os.sep in spec or (os.altsep and os.altsep in spec):
        raise MethodError(f"${PLUGINS_ENV}: {spec!r} is neither a module name nor a .py file; name a module "
                          "(my_lab.methods) or the path of a .py file")
    try:
        return importlib.import_module(spec)
    except ImportError as e:
        raise MethodError(f"${PLUGINS_ENV}: cannot import {spec!r} ({e}); give an importable module name or the "
                          "path of a .py file") from None
    except Exception as e:
        raise _failure(f"module {spec!r}", e) from e


def load_plugins() -> list[str]:
    """Methods from outside segbench: the modules or files named in $SEGBENCH_METHODS (imported once each), then the
    `segbench.methods` entry points of installed packages (a Method subclass or a registering module). Returns the
    names of the methods this call added."""
    before = set(METHODS.names())
    for spec in filter(None, (s.strip() for s in os.environ.get(PLUGINS_ENV, "").split(os.pathsep))):
        if spec not in _imported:
            _imported[spec] = _import_file_or_module(spec)
    METHODS.load_entry_points(ENTRY_POINT_GROUP, Method)
    return sorted(set(METHODS.names()) - before)


__all__ = ["PLUGINS_ENV", "METHODS", "Method", "MethodError", "OptionError", "Batch", "TrainRun", "build_method",
           "method_options", "load_plugins",
           "InstanceWhitening", "instance_whitening_loss", "isw_mask", "covariance", "CovarianceVariance",
           "SwitchWhiten2d", "MixStyle", "DistributionUncertainty", "NormalizationPerturbation", "PASTA", "pasta",
           "OUTPUT_PLACES", "insert_after", "place_module", "place_channels", "replace_stem_norm", "resnet_of",
           "set_post_add",
           "StyleHallucination", "farthest_point_sampling", "basis_styles", "instance_style", "style_consistency_loss",
           "retrospection_mask", "retrospection_loss"]
