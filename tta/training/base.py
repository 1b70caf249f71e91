"""The DG training-method contract, after DomainBed's ``Algorithm``: ``update`` and ``predict``.

A training method owns one source model for one training run. The loop calls

* ``setup(model, num_classes, total_steps)`` once: the method builds its optimizer and
  any state (e.g. a class-wise bank) and finds the model's output layer;
* ``update(minibatches)`` every step, with one ``(x, y)`` minibatch per source domain
  (``x`` float NCHW in [0, 1]; labels are training data here): one optimization step,
  returning the step's losses as floats;
* ``predict(x)`` for validation and test: the logits.

``state_dict()`` / ``load_state_dict()`` carry everything but the model weights (the
optimizer, the step counter, method state such as RIDG's bank) so a killed run resumes
bit for bit. Hyperparameters are declared as :class:`tta.hparams.HParam` (default +
search range) exactly as test-time methods declare theirs; :data:`OPTIMIZER_HPARAMS`
are shared by every method.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tta.errors import UserError
from tta.hparams import HParam, resolve

OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], dict[str, Any]], torch.optim.Optimizer]] = {
    "adam": lambda params, hp: torch.optim.Adam(params, lr=hp["lr"], weight_decay=hp["weight_decay"]),
    "sgd": lambda params, hp: torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"],
                                              weight_decay=hp["weight_decay"]),
}

#: DomainBed's defaults for ResNets: Adam, lr 5e-5, no weight decay (ranges: its random search).
OPTIMIZER_HPARAMS: dict[str, HParam] = {
    "lr": HParam(5e-5, "learning rate", 0.0, None, search=(1e-5, 3e-5, 5e-5, 1e-4, 3e-4, 1e-3)),
    "weight_decay": HParam(0.0, "L2 weight decay (added to the gradient)", 0.0, None, search=(0.0, 1e-6, 1e-4, 1e-2)),
    "optimizer": HParam("adam", "base optimizer: adam or sgd", search=("adam",)),
    "momentum": HParam(0.9, "SGD momentum (optimizer=sgd only)", 0.0, 1.0, search=(0.9,)),
}


class HeadTap:
    """The model's output ``nn.Linear`` (the last one with ``num_classes`` outputs) and its input.

    A forward pre-hook records the classifier's input ``z`` (the features) at every
    forward, so methods that need ``z`` and the classifier weights ``w`` (RIDG, UDIM) work
    on any network ending in a linear layer, timm's included.
    """

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
        if not heads:
            raise UserError(f"the model has no nn.Linear output layer with {num_classes} outputs")
        self.linear: nn.Linear = heads[-1]
        self.features: torch.Tensor | None = None
        self.linear.register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.features = args[0]


@contextlib.contextmanager
def bn_statistics_kept(model: nn.Module) -> Iterator[None]:
    """Run forwards whose BatchNorm running statistics (and step counters) are restored afterwards.

    Used for every pass after the first of a multi-pass update (SAM's second pass at the
    perturbed weights, UDIM's extra passes), so running statistics see each batch once.
    """
    buffers = [b for m in model.modules() if isinstance(m, _BatchNorm)
               for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)


class TrainingMethod:
    """Base class of DG training methods. Subclasses register with ``@register_training_method``."""

    name: ClassVar[str] = ""
    hparams: ClassVar[dict[str, HParam]] = OPTIMIZER_HPARAMS

    def __init__(self, **overrides: Any) -> None:
        self.hp: dict[str, Any] = resolve(f"training method {self.name!r}", self.hparams, overrides)
        if self.hp["optimizer"] not in OPTIMIZERS:
            raise UserError(f"optimizer {self.hp['optimizer']!r} is not one of {', '.join(OPTIMIZERS)}")
        self.model: nn.Module | None = None
        self.steps_done = 0
        self.total_steps = 0

    def setup(self, model: nn.Module, num_classes: int, total_steps: int) -> None:
        self.model = model
        self.num_classes = num_classes
        self.total_steps = total_steps
        self.head = HeadTap(model, num_classes)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = OPTIMIZERS[self.hp["optimizer"]](self.params, self.hp)

    # -- the contract ------------------------------------------------------------------
    def update(self, minibatches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """One optimization step on one minibatch per source domain; returns the losses."""
        x, y = concat(minibatches)
        losses = self.step(x, y)
        self.steps_done += 1
        return losses

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # -- resumable state -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "steps_done": self.steps_done, "extra": self.extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps_done = int(state["steps_done"])
        self.load_extra_state(state["extra"])

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Method state outside the model and optimizer (tensors only)."""
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`extra_state`."""

    # -- helpers -----------------------------------------------------------------------------
    def descend(self, loss: torch.Tensor) -> None:
        """Plain step: zero the gradients, backpropagate ``loss``, step the optimizer."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def concat(minibatches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([x for x, _ in minibatches]), torch.cat([y for _, y in minibatches])


def gradients(loss: torch.Tensor, params: list[nn.Parameter], **kwargs: Any) -> list[torch.Tensor]:
    """``d loss / d params``, zeros for parameters the loss does not use."""
    grads = torch.autograd.grad(loss, params, allow_unused=True, **kwargs)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)
