"""``erm``: Empirical Risk Minimization (Vapnik 1998), the DomainBed baseline.

The source domains' minibatches are pooled and the mean cross-entropy is minimized:
``L(theta) = 1/|B| sum_(x,y) in B CE(f_theta(x), y)``, one optimizer step per update.
"""

from tta.registry import register_training_method
from tta.training.base import TrainingMethod, cross_entropy


@register_training_method("erm")
class ERM(TrainingMethod):
    """ERM: mean cross-entropy over the pooled source minibatches (DomainBed's baseline)."""

    def step(self, x, y):
        loss = cross_entropy(self.model(x), y)
        self.descend(loss)
        return {"loss": loss.item()}
