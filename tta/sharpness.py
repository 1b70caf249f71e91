"""The sharpness-aware step, written once for DG's ``sam``/``udim`` and test-time ``sar``.

Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware Minimization for Efficiently Improving
Generalization" (ICLR 2021), Eqn. 2: the first-order solution of ``max_{||e|| <= rho} L(w + e)``

    e = rho * g / ||g||_2                           (SAM)
    e = rho * T^2 g / ||T g||_2,  T = |w| + eta      (ASAM, Kwon et al., ICML 2021)

with ``||.||_2`` the norm over all trained tensors together. The update then takes the base
optimizer's step with the gradient at ``w + e`` applied to ``w`` (restored from a copy, not
by subtracting ``e``). Two passes per step: :func:`ascent` gives ``e`` from the first pass's
gradients, :func:`perturbed_backward` runs the second pass at ``w + e``.

Order of the arithmetic: ``s = rho / (||T g|| + 1e-12)``, then ``e = T^2 * g * s``, the order
of the SAM authors' reference optimizer (davda54/sam ``first_step``; the same code is in
mariodoebler/test-time-adaptation 8b2ed63 ``classification/methods/sar.py`` lines 156-165),
so that ``sar`` reproduces that implementation bit for bit.

This module sits outside :mod:`tta.methods` and :mod:`tta.training` (it imports neither) so
that both can use it without one package depending on the other.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

#: added to the gradient norm before dividing (davda54/sam, MD ``sar.py`` line 159)
NORM_EPS = 1e-12


def ascent(grads: Sequence[torch.Tensor], rho: float,
           scale: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The perturbation ``e`` for ``grads`` (one tensor per trained parameter).

    ``scale``: ASAM's ``T`` per parameter (``None``: plain SAM, ``T = 1``).
    """
    if scale is None:
        norm = torch.norm(torch.stack([g.norm(p=2) for g in grads]), p=2)
        factor = rho / (norm + NORM_EPS)
        return [g * factor for g in grads]
    norm = torch.norm(torch.stack([(t * g).norm(p=2) for t, g in zip(scale, grads)]), p=2)
    factor = rho / (norm + NORM_EPS)
    return [t * t * g * factor for t, g in zip(scale, grads)]


def perturbed_backward(params: Sequence[torch.Tensor], perturbation: Sequence[torch.Tensor],
                       loss_fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Leave in ``p.grad`` the gradient of ``loss_fn()`` at ``w + e``; restore ``w`` exactly; return the loss.

    The gradients of ``params`` are cleared (``None``) before the pass, so ``.grad`` holds this
    pass's gradient only; the caller then takes its optimizer step.
    """
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, e in zip(params, perturbation):
            p.add_(e)
    for p in params:
        p.grad = None
    loss = loss_fn()
    loss.backward()
    with torch.no_grad():
        for p, original in zip(params, saved):
            p.copy_(original)
    return loss
