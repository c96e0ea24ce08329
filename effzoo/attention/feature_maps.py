"""Feature maps φ of kernel attention: softmax(QKᵀ) ≈ φ(Q)φ(K)ᵀ, so attention costs O(L·m·d).

Each map is a small ``nn.Module``: ``forward(x, is_query=..., mask=...)`` takes
(batch, heads, length, head_dim) and returns non-negative (batch, heads, length, num_features)
features, computed in float32 (float64 stays float64) even under bf16/fp16 autocast.

- :class:`FavorSoftmaxFeatures`: FAVOR+ positive orthogonal random features (Performer,
  Choromanski et al. 2021, Lemma 1 and §2.4), an unbiased estimate of exp(q·k/√d).
- :class:`FavorReluFeatures`: the Performer's generalised attention with f = ReLU (§2.2).
- :class:`EluFeatures`: elu(x) + 1 (Linear Transformer, Katharopoulos et al. 2020, eq. 7).
- :class:`HedgehogFeatures`: softmax over [Wx, −Wx] with a learnable per-head W
  (Hedgehog, Zhang et al., ICLR 2024, §4: the "Hedgehog" feature map).

Keys of FAVOR+ softmax are stabilised by a shared per-(batch, head) maximum that the map
reports as a log-scale (:meth:`FeatureMap.keys_with_log_scale`), so that a recurrent state can be
rescaled online when later keys are larger (as online softmax does).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import initialization as init


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 → float32; float32 and float64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class FeatureMap(nn.Module):
    """A non-negative feature map φ: (batch, heads, length, head_dim) -> (batch, heads, length, m)."""

    #: Size m of the feature axis.
    num_features: int

    def forward(self, x: torch.Tensor, *, is_query: bool = True, mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def keys_with_log_scale(
        self, k: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Key features divided by exp(log_scale), and log_scale ((batch, heads, 1, 1) or None).

        ``mask`` (batch, length), True for real keys, keeps padded keys out of the stabiliser.
        Maps without a stabiliser return ``None``.
        """
        return self(k, is_query=False, mask=mask), None

    def reset_parameters(self) -> None:
        """(Re)initialise parameters and buffers not loaded from a checkpoint."""

    def count_training_call(self) -> None:
        """Called once per training forward of the mechanism (random maps redraw on schedule)."""

    @property
    def version(self) -> int:
        """Changes whenever the map's features change outside training (a cache checks it)."""
        return 0


class EluFeatures(FeatureMap):
    """φ(x) = elu(x) + 1 (Katharopoulos et al. 2020, eq. 7): deterministic, m = head_dim."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.num_features = head_dim

    def forward(self, x: torch.Tensor, *, is_query: bool = True, mask: torch.Tensor | None = None) -> torch.Tensor:
        return nn.functional.elu(upcast(x)) + 1.0


class HedgehogFeatures(FeatureMap):
    """φ(x) = softmax([Wx + b, −(Wx + b)]) over the 2·feature_dim axis (Zhang et al. 2024, §4).

    Queries and keys have their own per-head maps (``weight[0]`` and ``weight[1]``, each
    (heads, head_dim, feature_dim)). Initialisation: W = the rectangular identity and b = 0, so a
    model converted from BERT starts from the parameter-free "softmax over ±x" map, well defined
    for any checkpoint; the paper's attention distillation then trains W to mimic softmax.
    """

    def __init__(self, num_heads: int, head_dim: int, feature_dim: int) -> None:
        super().__init__()
        self.num_features = 2 * feature_dim
        self.weight = nn.Parameter(torch.empty(2, num_heads, head_dim, feature_dim))
        self.bias = nn.Parameter(torch.empty(2, num_heads, feature_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        eye = torch.eye(self.weight.shape[-2], self.weight.shape[-1], device=self.weight.device)
        init.copy_(self.weight, eye.expand_as(self.weight))
        init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, *, is_query: bool = True, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = upcast(x)
        which = 0 if is_query else 1
        projected = torch.einsum("bhld,hdf->bhlf", x, self.weight[which].to(x.dtype))
        projected = projected + self.bias[which].to(x.dtype)[None, :, None, :]
        return torch.softmax(torch.cat([projected, -projected], dim=-1), dim=-1)


def draw_projection(
    num_features: int, head_dim: int, orthogonal: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A (num_features, head_dim) matrix of random directions ω (float32, on the generator's device).

    Orthogonal random features (Choromanski et al. 2021, §2.4): head_dim × head_dim Gaussian
    blocks orthogonalised with QR, rows rescaled to chi-distributed norms (the norms of Gaussian
    vectors), so each row is marginally N(0, I) but rows in a block are exactly orthogonal. The
    columns of Q are multiplied by the signs of diag(R) (Mezzadri 2007): without it LAPACK's sign
    convention biases the directions (e.g. the first one always has a non-positive first entry)
    and the estimate of exp(q·k) keeps an error that more features do not remove.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    # float32 whatever the default dtype (a model built in float16 sets it; QR has no half kernel on CPU)
    gaussian = dict(generator=generator, device=device, dtype=torch.float32)
    if not orthogonal:
        return torch.randn(num_features, head_dim, **gaussian)
    num_blocks = math.ceil(num_features / head_dim)
    q, r = torch.linalg.qr(torch.randn(num_blocks, head_dim, head_dim, **gaussian))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]  # sign fix: Haar, not LAPACK-biased
    directions = q.transpose(-1, -2).reshape(num_blocks * head_dim, head_dim)[:num_features]
    norms = torch.randn(num_features, head_dim, **gaussian).norm(dim=-1, keepdim=True)
    return directions * norms


class RandomFeatures(FeatureMap):
    """Base of the FAVOR+ maps: a random projection ω kept as a persistent buffer.

    The projection is saved in the state dict, so a reloaded model gives identical outputs.
    ``feature_redraw_interval`` = N redraws it in training only, before the training forward
    calls N, 2N, 3N, … (counted from 0), so each projection serves exactly N training calls;
    evaluation never redraws.
    """

    def __init__(
        self,
        head_dim: int,
        num_features: int = 256,
        orthogonal: bool = True,
        feature_redraw_interval: int | None = None,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.num_features = num_features
        self.orthogonal = orthogonal
        self.feature_redraw_interval = feature_redraw_interval
        self.training_calls = 0
        self.num_draws = 0
        self.register_buffer("projection", torch.empty(num_features, head_dim), persistent=True)
        self.redraw()

    def redraw(self, generator: torch.Generator | None = None) -> None:
        """Draw a new projection (from ``generator``, default the global CPU generator)."""
        with torch.no_grad():
            self.projection.copy_(draw_projection(self.num_features, self.head_dim, self.orthogonal, generator))
        self.num_draws += 1

    def reset_parameters(self) -> None:
        """Draw a projection unless one was loaded from a checkpoint (Transformers' init flag)."""
        if not getattr(self.projection, "_is_hf_initialized", False):
            self.redraw()

    def count_training_call(self) -> None:
        interval = self.feature_redraw_interval
        if interval is not None and self.training_calls > 0 and self.training_calls % interval == 0:
            self.redraw()
        self.training_calls += 1

    @property
    def version(self) -> int:
        return self.num_draws

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """ωᵀx̂ for x̂ = x·d^(-1/4), so that x̂_q·x̂_k = q·k/√d (the scale is folded into ω)."""
        x = upcast(x)
        return x @ (self.projection.to(x.dtype) * self.head_dim**-0.25).T


def _graph_is_freed_after_this_backward() -> bool:
    """True inside a backward that neither keeps the graph (``retain_graph``) nor records one
    (``create_graph``): saved tensors may then be overwritten. AOTAutograd asks the same question
    to free its saved tensors early; without that hook (old torch) the answer is a safe False."""
    keeps_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return keeps_graph is not None and not keeps_graph() and not torch.is_grad_enabled()


class _ShiftedExpInPlace(torch.autograd.Function):
    """x ← exp(x − offset), offset broadcast along the feature axis; only the output is kept for backward.

    Autograd's exp(x − offset) writes two new (L × m) tensors forward and three backward (the
    product with the output, its negation for the offset, a reduction); this writes none, either
    way: the backward multiplies the gradient into the saved output, which no one reads after it
    (every consumer of the output has run its backward before this one), and the offset's
    gradient is that product's row sum. At 8K–16K tokens and m = 256 it is FAVOR+'s largest
    elementwise cost, and a fresh L × m tensor costs more in page faults than in arithmetic.
    Under ``retain_graph=True`` or ``create_graph=True`` the product is out of place, so the graph
    can be walked again or differentiated.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        x.sub_(offset).exp_()
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        (out,) = ctx.saved_tensors
        grad_x = out.mul_(grad) if _graph_is_freed_after_this_backward() else grad * out
        grad_offset = -grad_x.sum(dim=-1, keepdim=True) if ctx.needs_input_grad[1] else None
        return grad_x, grad_offset


def shifted_exp_(x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """exp(x − offset) written over ``x`` (an intermediate no one else reads), ``offset`` of shape
    (..., 1): the value and gradients of autograd's ``torch.exp(x - offset)``."""
    return _ShiftedExpInPlace.apply(x, offset)


class FavorSoftmaxFeatures(RandomFeatures):
    """Positive random features φ(x) = exp(ωᵀx̂ − ‖x̂‖²/2)/√m with E[φ(q)·φ(k)] = exp(q·k/√d).

    Choromanski et al. 2021, Lemma 1 (FAVOR+), with the paper's stabiliser: the exponent minus its
    maximum, per row for queries (the normaliser cancels it, and with it the query's ‖x̂‖²/2)
    and shared over the real keys of a (batch, head) for keys (a common factor, so ratios stay
    exact). Every per-row term is folded into one offset, so an L×m tensor sees one subtraction
    and one exp.
    """

    def forward(self, x: torch.Tensor, *, is_query: bool = True, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not is_query:
            return self.keys_with_log_scale(x, mask)[0]
        projected = self._project(x)
        offset = projected.detach().amax(dim=-1, keepdim=True) + 0.5 * math.log(self.num_features)
        return shifted_exp_(projected, offset)

    def keys_with_log_scale(
        self, k: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k = upcast(k)  # once: both uses' gradients add up in float32
        projected = self._project(k)
        half_norm = k.square().sum(dim=-1, keepdim=True) * (0.5 / math.sqrt(self.head_dim))
        row_max = projected.detach().amax(dim=-1, keepdim=True) - half_norm.detach()
        if mask is not None:
            row_max = row_max.masked_fill(~mask[:, None, :, None], float("-inf"))
        log_scale = row_max.amax(dim=-2, keepdim=True)  # -inf: no real key
        shift = torch.where(torch.isfinite(log_scale), log_scale, torch.zeros_like(log_scale))
        offset = half_norm + (shift + 0.5 * math.log(self.num_features))
        if mask is not None:
            offset = offset.masked_fill(~mask[:, None, :, None], float("inf"))  # exp(-inf) = 0
        return shifted_exp_(projected, offset), log_scale


class FavorReluFeatures(RandomFeatures):
    """φ(x) = (relu(ωᵀx̂) + ε)/√m: the Performer's generalised attention with f = ReLU (§2.2).

    ε (the paper code's ``kernel_epsilon``, 1e-3) keeps every normaliser positive.
    """

    def __init__(self, *args, epsilon: float = 1e-3, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.epsilon = epsilon

    def forward(self, x: torch.Tensor, *, is_query: bool = True, mask: torch.Tensor | None = None) -> torch.Tensor:
        return (torch.relu(self._project(x)) + self.epsilon) / math.sqrt(self.num_features)
