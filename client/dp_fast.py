"""The fast DP-SGD engine: Opacus's ``make_private`` mechanism, vectorised for ``nn.Linear``.

Why not Opacus itself: for a small tabular MLP a DP-SGD step is dominated by bookkeeping,
not arithmetic. Opacus materialises every per-sample gradient (batch times parameters), walks
a ``DataLoader`` and clips parameter by parameter; this engine computes the same clipped
sum with "ghost norms" and nothing per-sample but two vectors per layer.

For a linear layer ``z = a Wᵀ + b`` the per-sample gradient of sample ``i`` is the outer
product ``g_i a_iᵀ`` (and ``g_i`` for the bias), where ``g_i = ∂loss_i/∂z_i``. Its squared
Frobenius norm is ``‖g_i‖² · ‖a_i‖²`` (plus ``‖g_i‖²``): the norm costs two row sums, and the
clipped sum ``Σ_i c_i g_i a_iᵀ`` is a single matrix product ``(c ⊙ G)ᵀ A``. One forward pass,
one backward pass to the layer *outputs* (no weight gradients from autograd), and one
matrix product per layer — about what plain training costs.

The mechanism is exactly Opacus's (see ``opacus.optimizers.DPOptimizer``): Poisson sampling
with rate ``q`` (every record independently in every step, so batch sizes vary and may be
zero), clipping of each sample's gradient over *all* parameters together to norm ``C`` with
factor ``min(1, C / (‖grad_i‖ + 1e-6))``, Gaussian noise of std ``σ·C`` per parameter added
to the clipped sum, division by the plan's expected batch size ``q·N``. The accountant's
inputs ``(σ, q, steps)`` are therefore those of :func:`client.training.plan_dp_round`. The
batches and the noise come from :class:`client.secure_random.DpRandom`, as the Opacus
engine's do: a 128-bit secret key, where torch's generator would keep 32 bits of a seed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from oralfed.client.secure_random import DpRandom
from oralfed.client.training import DpRoundPlan, TrainingConfigError, apply_proximal_step

__all__ = ["GhostClipping", "train_dp_fast"]

OPACUS_EPS = 1e-6  # Opacus adds this to every per-sample norm before dividing


class GhostClipping:
    """Clipped, noised DP-SGD gradients for a model whose parameters all live in ``nn.Linear``.

    While attached it records, with forward hooks, each linear layer's input and output of
    the current forward pass; :meth:`private_gradient` turns them into the clipped, noised
    gradient. Any other parametrised layer is refused up front, because its per-sample norm
    would be silently missing from the clipping (ReLU and other parameter-free layers are
    fine), and so are frozen parameters, which Opacus would leave out of the norm.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.parameters = list(model.parameters())
        self._linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        _refuse_unsupported_parameters(model, self._linears)
        self._activations: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
        self._handles: list[RemovableHandle] = [
            layer.register_forward_hook(self._record) for layer in self._linears
        ]

    def detach(self) -> None:
        """Remove the hooks: the model is an ordinary module again."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _record(
        self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> None:
        if inputs[0].dim() != 2:
            raise TrainingConfigError(
                f"the fast DP engine needs 2-D inputs to nn.Linear, got shape "
                f"{tuple(inputs[0].shape)}: use --dp-engine opacus"
            )
        self._activations.append((layer, inputs[0], output))  # type: ignore[arg-type]

    def private_gradient(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        clip_norm: float,
        noise_std: float,
        expected_batch_size: float,
        rng: DpRandom,
    ) -> torch.Tensor:
        """Set each parameter's ``.grad`` to ``(Σ_i clip_C(∇loss_i) + N(0, noise_std²)) / E``
        and return the batch's summed loss.

        This is Opacus's ``DPOptimizer.pre_step`` (``clip_and_accumulate``, ``add_noise``,
        ``scale_grad``) for the same batch; the noise is drawn parameter by parameter in
        ``model.parameters()`` order, as Opacus draws it, so one :class:`DpRandom` state
        gives both engines the same noise. The division by ``E`` is folded into the noise's
        std and the clipping factors, which saves two passes over the gradients.
        """
        self._activations.clear()
        logits = self.model(features)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        layers = self._activations
        if len({id(layer) for layer, _, _ in layers}) != len(layers):
            raise TrainingConfigError(
                "the fast DP engine needs each nn.Linear used once per forward pass "
                "(shared weights would need per-sample cross terms): use --dp-engine opacus"
            )
        output_grads = torch.autograd.grad(loss, [output for _, _, output in layers])
        with torch.no_grad():
            for parameter in self.parameters:
                parameter.grad = rng.normal_like(parameter, noise_std / expected_batch_size)
            # ‖∇loss_i‖² = Σ_layers ‖g_i‖² (‖a_i‖² + 1 if the layer has a bias)
            squared_norms: torch.Tensor | None = None
            for (layer, inputs, _), grad in zip(layers, output_grads, strict=True):
                grad_norms = torch.linalg.vecdot(grad, grad)
                input_norms = torch.linalg.vecdot(inputs, inputs)
                if layer.bias is not None:  # g + g·a adds the bias term without a "+1" pass
                    layer_norms = torch.addcmul(grad_norms, grad_norms, input_norms)
                else:
                    layer_norms = grad_norms.mul_(input_norms)
                squared_norms = (
                    layer_norms if squared_norms is None else squared_norms.add_(layer_norms)
                )
            assert squared_norms is not None  # the constructor refused models without Linear
            # Opacus's factor min(1, C / (‖∇loss_i‖ + 1e-6)) / E, written as (C / E) times
            # 1 / max(‖∇loss_i‖ + 1e-6, C) so that C / E rides on addmm's alpha for free.
            factors = squared_norms.sqrt_().add_(OPACUS_EPS).clamp_(min=clip_norm).reciprocal_()
            scale = clip_norm / expected_batch_size
            column = factors.unsqueeze(1)
            for (layer, inputs, _), grad in zip(layers, output_grads, strict=True):
                weight_grad, grad_t = layer.weight.grad, grad.t()
                assert weight_grad is not None
                if grad.shape[1] < inputs.shape[1]:  # scale the narrower factor of G_cᵀ A
                    weight_grad.addmm_((grad * column).t(), inputs, alpha=scale)
                else:
                    weight_grad.addmm_(grad_t, inputs * column, alpha=scale)
                if layer.bias is not None:
                    layer.bias.grad.addmv_(grad_t, factors, alpha=scale)  # type: ignore[union-attr]
        self._activations.clear()
        return loss.detach()


def _refuse_unsupported_parameters(model: nn.Module, linears: list[nn.Linear]) -> None:
    supported = {id(p) for layer in linears for p in layer.parameters()}
    for module_name, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                raise TrainingConfigError(
                    f"the fast DP engine trains every parameter; {module_name or 'model'}."
                    f"{name} is frozen: use --dp-engine opacus"
                )
            if id(parameter) not in supported:
                raise TrainingConfigError(
                    f"the fast DP engine supports only nn.Linear parameters; "
                    f"{module_name or 'model'}.{name} belongs to a {type(module).__name__}: "
                    "use --dp-engine opacus"
                )


def train_dp_fast(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    plan: DpRoundPlan,
    seed: int | None = None,
) -> tuple[float, int]:
    """Run ``plan`` (SGD with momentum 0.9, FedProx pull after each private step, as the
    Opacus engine does); return the mean loss per sampled example and the number
    of noisy steps taken. The batches and the noise come from ``DpRandom.from_seed(seed)``
    (tests and benchmarks) or, without a seed, from :meth:`DpRandom.secret`."""
    rng = DpRandom.secret() if seed is None else DpRandom.from_seed(seed)
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    noise_std = plan.noise_multiplier * plan.clip_norm
    global_weights = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(
        model.parameters(), lr=plan.learning_rate, momentum=0.9, foreach=True
    )
    clipping = GhostClipping(model)
    losses: list[torch.Tensor] = []
    examples, steps = 0, 0
    model.train()
    try:
        for batch in rng.poisson_batches(len(labels), plan.sample_rate, plan.steps):
            # An empty batch still takes its noisy step: the accountant counted it.
            losses.append(
                clipping.private_gradient(
                    features[batch],
                    labels[batch],
                    plan.clip_norm,
                    noise_std,
                    plan.expected_batch_size,
                    rng,
                )
            )
            examples += len(batch)
            optimizer.step()
            apply_proximal_step(model, global_weights, plan.learning_rate, plan.proximal_mu)
            steps += 1
    finally:
        clipping.detach()
    mean_loss = float(torch.stack(losses).sum()) / examples if examples else float("nan")
    return mean_loss, steps
