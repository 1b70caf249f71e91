"""DG training: methods that change how the source model is trained (ERM, SAM, UDIM, RIDG).

Importing this package registers the built-in training methods in
:data:`tta.registry.TRAINING_METHODS`; out-of-tree ones come from the entry point group
``tta.training_methods`` (:mod:`tta.plugins`) or ``--plugin FILE``. The loop
(:mod:`tta.training.loop`) trains one (method, target, seed); :mod:`tta.training.benchmark`
runs the leave-one-domain-out grid with test-time methods on top and
:mod:`tta.training.report` renders it.
"""

from tta.training import erm, ridg, sam, udim  # noqa: F401
from tta.training.base import TrainingMethod

__all__ = ["TrainingMethod"]
