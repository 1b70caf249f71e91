"""The method contract: ``setup(model)``, ``forward(x) -> logits``, ``reset()``.

A method wraps a source model for one run. The runner calls

* ``setup(model)`` once: the method configures the model (e.g. swaps BatchNorm layers,
  selects trainable parameters, builds an optimizer) and declares what it touches; the
  base class then snapshots exactly that state;
* ``forward(x)`` for every test batch: adapt (if the method adapts) and return logits.
  ``x`` is the only input; labels never reach a method. A method that needs label-free
  side inputs of the protocol (e.g. CMA's normal-condition ``reference`` image) names
  them in ``side_inputs`` and receives them as keyword arguments, ``forward(x, reference=...)``;
* ``fit_source(batches, description)`` once after ``setup``, only for a method whose
  ``source_images_wanted()`` is positive: that many clean, label-free images of the source
  distribution from the protocol's reader (e.g. EATA's Fisher information); a protocol
  without them refuses such a method before any work;
* ``reset()`` whenever the scenario says so (episodic: before every domain): the model
  and all method state return to the snapshot bit for bit.

Training-time (domain generalization) methods subclass
:class:`tta.training.base.TrainingMethod` and reuse the same hyperparameter machinery.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable

import torch
from torch import nn

from tta.hparams import HParam, resolve


class Method:
    """Base class of every test-time method. Subclasses register with ``@register_method``."""

    name: ClassVar[str] = ""
    hparams: ClassVar[dict[str, HParam]] = {}
    #: ``False`` lets the runner call ``forward`` under ``torch.inference_mode``.
    needs_grad: ClassVar[bool] = False
    #: label-free side inputs (``Batch.extras`` keys) passed to ``forward`` as keyword arguments
    side_inputs: ClassVar[tuple[str, ...]] = ()
    #: ``True``: the method calls ``self.model`` on whole batches of one shape, so ``torch.compile`` of it
    #: traces once and is reused across batches, domains and resets (tested per family); the runner then
    #: compiles it by default on long runs (:func:`tta.runner.compile_pays`). ``False`` (the default, and
    #: for plugins): eager unless ``--compile``.
    compilable: ClassVar[bool] = False

    def __init__(self, **overrides: Any) -> None:
        self.hp: dict[str, Any] = resolve(f"method {self.name!r}", self.hparams, overrides)
        self.model: nn.Module | None = None
        self._touched: list[torch.Tensor] = []
        self._snapshot: list[torch.Tensor] = []

    # -- the three hooks -------------------------------------------------------------
    def setup(self, model: nn.Module) -> None:
        """Take the model, configure it, and snapshot the state the method declares."""
        self.model = model
        model.eval()
        model.requires_grad_(False)
        self.configure(model)
        self._touched = list(self.touched_tensors())
        self._snapshot = [t.detach().clone() for t in self._touched]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Adapt on ``x`` (if the method adapts) and return logits for ``x``."""
        raise NotImplementedError

    def reset(self) -> None:
        """Return the declared model tensors and the method's own state to the setup snapshot."""
        with torch.no_grad():
            for tensor, saved in zip(self._touched, self._snapshot):
                tensor.copy_(saved)
        self.reset_state()

    # -- what subclasses override ----------------------------------------------------
    def configure(self, model: nn.Module) -> None:
        """Change the model for this method (swap layers, pick parameters). Default: nothing."""

    def touched_tensors(self) -> list[torch.Tensor]:
        """Model tensors the method may change in place during ``forward`` (snapshotted for reset)."""
        return []

    def reset_state(self) -> None:
        """Reset state the method keeps outside the model (running statistics, optimizer)."""

    def source_images_wanted(self) -> int:
        """How many clean source images :meth:`fit_source` needs (0, the default: none)."""
        return 0

    #: what the source images are for, named when a protocol has none (e.g. "its Fisher regularizer")
    source_images_use: ClassVar[str] = ""

    def fit_source(self, batches: Iterable[torch.Tensor], description: str) -> None:
        """Estimate what the method keeps from clean source images (batches of floats in [0, 1], as
        the test batches, label-free), after ``setup`` and before the first test batch; kept through
        ``reset``. ``description`` says what the images are (for the rows)."""

    def diverged(self) -> bool:
        """Whether a declared tensor turned non-finite (NaN/inf); the runner then resets the method.

        Subclasses with a loss extend this (e.g. with their last loss). One host sync per call.
        """
        return bool(self._touched) and not all_finite(self._touched)

    def row_extra(self) -> dict[str, Any]:
        """Facts about how the method ran that go into each result row's ``extra`` (default none)."""
        return {}

    def __call__(self, x: torch.Tensor, **extras: torch.Tensor) -> torch.Tensor:
        return self.forward(x, **extras)

    def describe(self) -> str:
        doc = (type(self).__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """True when every element of every tensor is finite (one host sync for the whole list)."""
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())
