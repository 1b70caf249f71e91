"""Built-in test-time methods; importing this package registers them."""

from tta.methods import adabn, alpha_bn, bn_adapt, bn_ema, cma, core, eata, eta, source, tent  # noqa: F401
from tta.methods.base import Method

__all__ = ["Method"]
