"""``source``: the frozen source model, no adaptation (the baseline every method is measured against)."""

from tta.methods.base import Method
from tta.registry import register_method


@register_method("source")
class Source(Method):
    """Frozen source model: BatchNorm uses the source (training) running statistics."""

    compilable = True

    def forward(self, x):
        return self.model(x)
