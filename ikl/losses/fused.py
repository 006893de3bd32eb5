"""Fused, chunked forward and backward of the IKL terms (wMSE + sCE) and of KL.

Each loss is one autograd node. Its forward walks the batch in chunks of rows; for each chunk it
computes the terms' per-row values and, for every input that needs a gradient, the terms' exact
gradients with respect to the logits (all closed forms, PAPER.md §1.3, §1.7):

    sCE  = 1/B · Σ_b [LSE(s_b/T) − Σ_j p_bj s_bj/T],  p = sg(softmax(t/T))
           ∂/∂s = (q − p)/(B·T),  q = softmax(s/T);  nothing flows into t (sg)
    wMSE = 1/D · Σ_b ½ S_b Σ_j w_j c_j²,  c = (t − s) − μ_b,  μ_b = Σ_j w_j (t − s)_j / S_b,  S_b = Σ_j w_j
           ∂/∂t = −∂/∂s = S_b w ⊙ c / D    (∂/∂s only with BA; D = B, or Σ_b S_b² if normalize)

The chunk's temporaries (a few [rows, C] tensors) are freed before the next chunk; what outlives
the forward is one [B, C] tensor per saved gradient: q − p for the student's sCE gradient (one
softmax of each input serves the value and the gradient) and S·w ⊙ c for the wMSE's. The backward
scales them by the incoming gradients and writes each input's gradient once.

Centring on the weighted mean is the closed form of paper Alg. 2 (Σ_jk w_j w_k (d_j − d_k)² =
2(S Σ w d² − (Σ w d)²)) evaluated without its cancellation: with c centred, Σ w c = 0, and the
value is ½ S Σ w c², so logits of ±1e4 lose nothing beyond the rounding of t − s itself.

``chunk_size=None`` picks as many rows as keep a chunk near ``CHUNK_ELEMENTS`` values (the whole
batch when it is smaller), so the temporaries never reach the full [B, C] size and the working
set stays in cache on a CPU. Peak memory of one call, beyond its inputs: the saved gradients (one
[B, C] tensor per term that sends one), the returned gradients, and a few chunks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

# Values per chunk when the caller does not choose: on a CPU 2^18 (1 MiB of float32 per
# temporary, cache-sized) or 2^16 per thread if that is more; 2^24 on an accelerator, where every
# chunk costs a round of kernel launches.
CHUNK_ELEMENTS = {"cpu": 1 << 18}
CHUNK_ELEMENTS_PER_THREAD = {"cpu": 1 << 16}
CHUNK_ELEMENTS_DEFAULT = 1 << 24
# chunks of at most this many values take the variant with fewer ops (per-op overhead dominates)
SMALL_ELEMENTS = 1 << 15


def chunk_rows_for(batch: int, classes: int, device: torch.device, chunk_size: int | None) -> int:
    """Rows per chunk: ``chunk_size`` if given (≥ 1), else about ``CHUNK_ELEMENTS`` values a chunk."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")
        return min(chunk_size, max(batch, 1))
    budget = CHUNK_ELEMENTS.get(device.type, CHUNK_ELEMENTS_DEFAULT)
    if device.type in CHUNK_ELEMENTS_PER_THREAD:
        budget = max(budget, CHUNK_ELEMENTS_PER_THREAD[device.type] * torch.get_num_threads())
    return max(1, min(batch, budget // max(classes, 1)))


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half and bfloat16 inputs compute in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _no_autocast(device: torch.device):
    """The losses compute in float32 (or float64) whatever autocast would pick for their ops."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class IKLSpec:
    """The static options of one fused IKL call (see ``ikl.losses.ikl`` for their meaning)."""

    wmse_weight: float
    sce_weight: float
    temperature: float = 1.0
    weight_power: float = 1.0
    normalize: bool = False
    break_asymmetry: bool = True
    weight_temperature: float | None = None  # sample-wise weights softmax(t/τ) computed per chunk
    wmse: bool = True  # compute the wMSE term
    sce: bool = True  # compute the sCE term


class _Workspace:
    """Per-call [rows, C] temporaries: the first chunk allocates them (out-of-place ops), later
    chunks write into them (``out=``; views for a shorter last chunk)."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.buffers: dict[str, Tensor] = {}

    def out(self, name: str, n: int) -> Tensor | None:
        buffer = self.buffers.get(name)
        if buffer is None or n == self.rows:
            return buffer
        return buffer[:n]

    def keep(self, name: str, x: Tensor) -> Tensor:
        self.buffers.setdefault(name, x)
        return x


def _buffer(work: _Workspace, name: str, like: Tensor) -> Tensor:
    """The workspace buffer ``name`` for a chunk shaped as ``like`` (allocated at first use)."""
    out = work.out(name, like.shape[0])  # (shape[0], not len(): len of a tensor is slow)
    return out if out is not None else work.keep(name, torch.empty_like(like))


_SCALARS: dict[tuple[float, torch.dtype], Tensor] = {}
_MAX_SCALARS = 4096


def _scaled(x: Tensor, value: float | Tensor, out: Tensor | None = None) -> Tensor:
    """x·value (into ``out`` if given). On a CPU the factor is a cached 0-dim tensor of x's dtype:
    the same product bit for bit (a Python float is cast to that dtype too), but without the
    per-call wrapping and cast of the scalar, which costs as much as the product at small sizes."""
    if x.device.type == "cpu" and not isinstance(value, Tensor) and value != 0.0:  # (keys: 0.0 == -0.0)
        key = (value, x.dtype)
        factor = _SCALARS.get(key)
        if factor is None:
            if len(_SCALARS) >= _MAX_SCALARS:  # (factors depend on B: bounded for varying batches)
                _SCALARS.clear()
            with torch.inference_mode(False):
                factor = _SCALARS.setdefault(key, torch.tensor(value, dtype=x.dtype))
        return torch.mul(x, factor) if out is None else torch.mul(x, factor, out=out)
    return torch.mul(x, value) if out is None else torch.mul(x, value, out=out)


def _softmax(x: Tensor, inv_t: float, out: Tensor, work: _Workspace) -> Tensor:
    """softmax(x·inv_t) into ``out`` (the scaled input goes to the scratch buffer)."""
    if inv_t != 1.0:
        x = _scaled(x, inv_t, _buffer(work, "scratch", x))
    return torch.softmax(x, dim=1, out=out)


def _chunk_weights(
    spec: IKLSpec,
    t: Tensor,
    rows: slice,
    whole: bool,
    weights: Tensor | None,
    table: Tensor | None,
    labels: Tensor | None,
    p: Tensor | None,
    work: _Workspace,
) -> tuple[Tensor, bool]:
    """The chunk's weight vectors w^γ (detached): given, prior rows by label, softmax(t/τ) or 1/C.

    ``t`` is the chunk's target rows ``rows`` of the batch (all of it when ``whole``). Returns
    (w, unit): ``unit`` when every row sums to 1 by construction (a softmax or the uniform vector,
    γ = 1), so that S = 1 may be used as it is, exactly, instead of its rounded sum. Computed
    weights go to the workspace buffer "p": the sCE is done with the target's softmax by now."""
    own = True  # whether w is the workspace buffer (may be modified in place)
    if weights is not None:
        w = weights if whole else weights[rows]
        own = w.dtype != t.dtype
        if own:
            w = _buffer(work, "p", t).copy_(w)
    elif table is not None:
        index = labels if whole else labels[rows]
        out = _buffer(work, "p", t)
        if table.dtype == t.dtype:
            w = torch.index_select(table, 0, index, out=out)
        else:
            w = out.copy_(table.index_select(0, index))
    elif spec.weight_temperature is not None:
        if p is not None and spec.weight_temperature == spec.temperature:
            w, own = p, False  # the sCE's target softmax at the same temperature: computed once, used twice
        else:
            w = _softmax(t, 1.0 / spec.weight_temperature, _buffer(work, "p", t), work)
    else:
        w = _buffer(work, "p", t).fill_(1.0 / t.shape[1])  # uniform weights (GI before epoch 1)
    unit = weights is None and table is None
    if spec.weight_power == 1.0:
        return w, unit
    if spec.weight_power == 0.0:
        return _buffer(work, "p", t).fill_(1.0), False
    if own:
        return w.pow_(spec.weight_power), False
    return torch.pow(w, spec.weight_power, out=_buffer(work, "p", t)), False


def _total(parts: list[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.stack(parts).sum()


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return torch.dot(a.view(-1), b.view(-1))


class FusedIKL(torch.autograd.Function):
    """(α·wMSE, β·sCE) of ``student`` [B, C] against ``target`` [B, C] in one node (module docstring).

    Outputs only the enabled terms, in that order. ``weights``/``table``+``labels`` are the weight
    source (or ``spec.weight_temperature``, or neither for uniform weights); they never get a
    gradient. ``need_student``/``need_target`` say which gradients to prepare.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        student: Tensor,
        target: Tensor,
        weights: Tensor | None,
        table: Tensor | None,
        labels: Tensor | None,
        spec: IKLSpec,
        chunk_rows: int,
        need_student: bool,
        need_target: bool,
    ) -> tuple[Tensor, ...]:
        ctx.set_materialize_grads(False)
        batch, classes = student.shape
        temperature, inv_t = spec.temperature, 1.0 / spec.temperature
        rows_per_chunk = min(chunk_rows, batch)
        # few values: log_softmax + exp (fewer ops); many: softmax + max (fewer passes of exp)
        small = rows_per_chunk * classes <= SMALL_ELEMENTS
        want_sce_grad = spec.sce and need_student
        want_wmse_grad = spec.wmse and (need_target or (need_student and spec.break_asymmetry))
        # The student's gradient is kc·g_sce·(q − p) − kw·g_wmse·∂wMSE (kc = β/(B·T), kw = α/D). The
        # terms are usually summed, so g_sce and g_wmse are one tensor: then the chunk folds the two
        # into (q − p) − (kw/kc)·∂wMSE while it is in cache and the backward only scales it. (D must
        # be known up front: not with normalize; the other cases are rebuilt in backward.)
        combine = (
            want_sce_grad and want_wmse_grad and spec.break_asymmetry and not spec.normalize and spec.sce_weight != 0
        )
        ratio = spec.wmse_weight * temperature / spec.sce_weight if combine else 0.0  # kw / kc
        # zero-weight rows only come from weights given by the caller or a power of them
        guard_zero = weights is not None or spec.weight_power != 1.0
        sce_grad = wmse_grad = None
        work = _Workspace(rows_per_chunk)
        sce_parts: list[Tensor] = []
        wmse_parts: list[Tensor] = []
        weight_parts: list[Tensor] = []
        tiny = torch.finfo(student.dtype).tiny
        with _no_autocast(student.device):  # (forward runs without grad)
            for start in range(0, batch, chunk_rows):
                rows = slice(start, min(start + chunk_rows, batch))
                whole = rows.stop - start == batch
                s, t = (student, target) if whole else (student[rows], target[rows])
                if not whole and start == 0:
                    sce_grad = torch.empty_like(student) if want_sce_grad else None
                    wmse_grad = torch.empty_like(student) if want_wmse_grad else None
                # [rows, C] buffers: "scratch" (scaled inputs, then t − s) and "p" (the target's
                # softmax, then the weights); q and ∂wMSE go straight into the saved gradients
                # (into workspace buffers when no gradient is wanted)
                p = None
                if spec.sce:
                    p = _softmax(t, inv_t, _buffer(work, "p", t), work)
                    if want_sce_grad:  # (None: the op allocates the saved gradient itself)
                        q_out = sce_grad[rows] if sce_grad is not None else None
                    else:
                        q_out = _buffer(work, "q", t)
                    scaled_s = s if inv_t == 1.0 else _scaled(s, inv_t, _buffer(work, "scratch", s))
                    if small:  # Σ_bj p · log_softmax(s/T), scaled by −β/B below
                        log_q = torch.log_softmax(scaled_s, dim=1, out=q_out)
                        sce_parts.append(_dot(p, log_q))
                        q = log_q.exp_() if want_sce_grad else None
                    else:
                        # T·Σ_b LSE(s_b/T) − Σ_bj p s: LSE = max(s)/T + log Z and 1/Z is q's largest
                        # entry (q's entry at the argmax of s is exp(0)/Z); scaled by β/(B·T) below
                        q = torch.softmax(scaled_s, dim=1, out=q_out)
                        # (amax, not max: max with indices has no fast kernel on a CPU)
                        lse = torch.sub(s.amax(dim=1), q.amax(dim=1).log_(), alpha=temperature)
                        sce_parts.append(lse.sum().sub_(_dot(p, s)))
                    if want_sce_grad:
                        q.sub_(p)  # the sCE's student gradient (q − p), scaled in backward
                        if whole:
                            sce_grad = q
                if spec.wmse:
                    w, unit = _chunk_weights(spec, t, rows, whole, weights, table, labels, p, work)
                    centred = torch.sub(t, s, out=_buffer(work, "scratch", t))
                    if want_wmse_grad:
                        grad = wmse_grad[rows] if wmse_grad is not None else None
                    else:
                        grad = _buffer(work, "grad", t)
                    grad = torch.mul(w, centred, out=grad)  # w ⊙ d, for the weighted mean
                    # c is centred on the weighted mean, so Σ w c = 0 up to rounding and
                    # ½(S Σ w c² − (Σ w c)²) = ½ S Σ w c² = ½ Σ_j c_j ∂/∂d_j with ∂/∂d = S w ⊙ c:
                    # no large sums cancel, whatever the logits' offsets (±1e4 stays exact)
                    if unit:  # S = 1
                        centred.sub_(grad.sum(dim=1, keepdim=True))
                        torch.mul(w, centred, out=grad)
                    else:
                        weight_sum = w.sum(dim=1, keepdim=True)
                        if spec.normalize:
                            weight_parts.append(weight_sum.square().sum())
                        divisor = weight_sum.clamp_min(tiny) if guard_zero else weight_sum
                        # (a [rows, 1] division, then a plain broadcast: addcdiv_ has no fast kernel here)
                        centred.sub_(grad.sum(dim=1, keepdim=True).div_(divisor))
                        torch.mul(w, centred, out=grad).mul_(weight_sum)
                    wmse_parts.append(_dot(centred, grad))
                    if want_wmse_grad and whole:
                        wmse_grad = grad
                    if combine:
                        (sce_grad if whole else sce_grad[rows]).sub_(grad, alpha=ratio)
                    del w
        outputs = []
        wmse_scale: float | Tensor = 0.0
        if spec.wmse:
            # normalize: D = Σ_b S_b² (= B when the rows sum to 1 by construction)
            wmse_scale = spec.wmse_weight / (_total(weight_parts) if weight_parts else batch)
            value = _total(wmse_parts)  # (a fresh 0-dim tensor: scaled in place)
            outputs.append(_scaled(value, 0.5 * wmse_scale, value))
        if spec.sce:
            factor = -spec.sce_weight / batch if small else spec.sce_weight * inv_t / batch
            value = _total(sce_parts)
            outputs.append(_scaled(value, factor, value))
        ctx.spec = spec
        ctx.sce_scale = spec.sce_weight * inv_t / batch
        ctx.combined = combine
        ctx.need = (need_student, need_target)
        tensors = [sce_grad, wmse_grad]
        ctx.wmse_scale = None if isinstance(wmse_scale, Tensor) else wmse_scale
        if isinstance(wmse_scale, Tensor):
            tensors.append(wmse_scale)
        ctx.save_for_backward(*tensors)
        return tuple(outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Tensor | None):  # type: ignore[override]
        spec: IKLSpec = ctx.spec
        saved = ctx.saved_tensors
        sce_grad, wmse_grad = saved[0], saved[1]
        wmse_scale = saved[2] if ctx.wmse_scale is None else ctx.wmse_scale
        grads = list(grads)
        grad_wmse = grads.pop(0) if spec.wmse else None
        grad_sce = grads.pop(0) if spec.sce else None
        need_student, need_target = ctx.need
        sce_scale = ctx.sce_scale
        grad_student = grad_target = None
        wmse = grad_wmse is not None and wmse_grad is not None
        if need_target and wmse:
            grad_target = wmse_grad * _scaled(grad_wmse, wmse_scale)
        if not need_student:
            return grad_student, grad_target, None, None, None, None, None, None, None
        if ctx.combined:  # sce_grad holds (q − p) − (kw/kc)·∂wMSE
            if grad_sce is grad_wmse:  # the terms were summed (or both unused)
                if grad_sce is not None:
                    grad_student = sce_grad * _scaled(grad_sce, sce_scale)
            elif grad_sce is None:
                grad_student = wmse_grad * _scaled(grad_wmse, -wmse_scale)
            else:  # kc·g_s·(combined) + kw·(g_s − g_w)·∂wMSE
                grad_student = sce_grad * _scaled(grad_sce, sce_scale)
                gap = grad_sce if grad_wmse is None else grad_sce - grad_wmse
                grad_student.addcmul_(wmse_grad, _scaled(gap, wmse_scale))
            return grad_student, grad_target, None, None, None, None, None, None, None
        sce = grad_sce is not None and sce_grad is not None
        student_wmse = wmse and spec.break_asymmetry
        if sce and student_wmse:
            if grad_target is not None:  # q − p scaled, less the target's gradient
                grad_student = sce_grad * _scaled(grad_sce, sce_scale)
                grad_student.sub_(grad_target)
            else:  # one allocation: −(α/D)·g_w·∂wMSE, then + (β/BT)·g_s·(q − p) in place
                grad_student = torch.mul(wmse_grad, _scaled(grad_wmse, -wmse_scale))
                grad_student.addcmul_(sce_grad, grad_sce, value=sce_scale)
        elif sce:
            grad_student = sce_grad * _scaled(grad_sce, sce_scale)
        elif student_wmse:
            grad_student = -grad_target if grad_target is not None else wmse_grad * _scaled(grad_wmse, -wmse_scale)
        return grad_student, grad_target, None, None, None, None, None, None, None


def ikl_terms(
    student: Tensor,
    target: Tensor,
    spec: IKLSpec,
    *,
    weights: Tensor | None = None,
    table: Tensor | None = None,
    labels: Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, ...]:
    """The enabled terms of ``spec`` (α·wMSE, then β·sCE) as one autograd node; inputs in any
    float dtype (computed in float32, float64 stays float64), gradients into those that need one."""
    if student.dim() != 2 or student.shape != target.shape:
        raise ValueError(f"logits must be [B, C] of one shape, got {tuple(student.shape)} and {tuple(target.shape)}")
    dtype = _compute_dtype(student, target)
    student_c = student if student.dtype == dtype else student.to(dtype)
    target_c = target if target.dtype == dtype else target.to(dtype)
    if not student_c.is_contiguous():  # the node reads rows as flat blocks
        student_c = student_c.contiguous()
    if not target_c.is_contiguous():
        target_c = target_c.contiguous()
    grad_on = torch.is_grad_enabled()
    need_student = grad_on and student_c.requires_grad
    need_target = grad_on and target_c.requires_grad
    if weights is not None:
        if weights.requires_grad:
            weights = weights.detach()
        if weights.shape != student.shape:
            raise ValueError(f"weights must be [B, C] = {tuple(student.shape)}, got {tuple(weights.shape)}")
    if table is not None and table.requires_grad:
        table = table.detach()
    rows = chunk_rows_for(student.shape[0], student.shape[1], student.device, chunk_size)
    return FusedIKL.apply(student_c, target_c, weights, table, labels, spec, rows, need_student, need_target)  # type: ignore[return-value]


class FusedKL(torch.autograd.Function):
    """KL(softmax(t/T) ‖ softmax(s/T)), batch mean, in one node with chunked temporaries.

    KL_b = Σ_j p_j (t_j − s_j)/T − LSE(t/T) + LSE(s/T); ∂/∂s = (q − p)/(B·T);
    ∂/∂t = p ⊙ ((t − s)/T − LSE(t/T) + LSE(s/T) − KL_b)/(B·T).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, student: Tensor, target: Tensor, temperature: float, chunk_rows: int, need_student: bool, need_target: bool
    ) -> Tensor:
        ctx.set_materialize_grads(False)
        batch = student.shape[0]
        inv_t = 1.0 / temperature
        grad_s = torch.empty_like(student) if need_student else None
        grad_t = torch.empty_like(student) if need_target else None
        work = _Workspace(min(chunk_rows, batch))
        parts: list[Tensor] = []
        with _no_autocast(student.device):  # (forward runs without grad)
            for start in range(0, batch, chunk_rows):
                rows = slice(start, min(start + chunk_rows, batch))
                s, t = student[rows], target[rows]
                p = _softmax(t, inv_t, _buffer(work, "p", t), work)
                q = _softmax(s, inv_t, grad_s[rows] if grad_s is not None else _buffer(work, "q", s), work)
                # T·(LSE(t/T) − LSE(s/T)) per row, LSE = max/T + log Z, 1/Z = the largest softmax entry
                gap = t.amax(dim=1, keepdim=True).sub_(s.amax(dim=1, keepdim=True))
                gap.add_(q.amax(dim=1, keepdim=True).log_().sub_(p.amax(dim=1, keepdim=True).log_()), alpha=temperature)
                diff = torch.sub(t, s, out=_buffer(work, "scratch", t))
                product = torch.mul(p, diff, out=grad_t[rows] if grad_t is not None else _buffer(work, "product", t))
                # T·KL_b = Σ_j p_j (t − s)_j − T·(LSE_t − LSE_s)
                kl = product.sum(dim=1, keepdim=True).sub_(gap)
                parts.append(kl.sum())
                if grad_t is not None:  # T·∂KL_b/∂t = p ⊙ ((t − s) − gap − T·KL_b)
                    diff.sub_(gap.add_(kl))
                    torch.mul(p, diff, out=product)
                if grad_s is not None:
                    q.sub_(p)
        ctx.scales = (inv_t / batch, inv_t * inv_t / batch)  # grad_t holds T·(…): one more 1/T
        ctx.save_for_backward(grad_s, grad_t)
        value = _total(parts)
        return _scaled(value, inv_t / batch, value)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor | None):  # type: ignore[override]
        if grad is None:
            return None, None, None, None, None, None
        grad_s, grad_t = ctx.saved_tensors
        scale_s, scale_t = ctx.scales
        return (
            None if grad_s is None else grad_s * _scaled(grad, scale_s),
            None if grad_t is None else grad_t * _scaled(grad, scale_t),
            None,
            None,
            None,
            None,
        )


def kl_div_fused(student: Tensor, target: Tensor, temperature: float, chunk_size: int | None) -> Tensor:
    if student.dim() != 2 or student.shape != target.shape:
        raise ValueError(f"logits must be [B, C] of one shape, got {tuple(student.shape)} and {tuple(target.shape)}")
    dtype = _compute_dtype(student, target)
    student_c = student if student.dtype == dtype else student.to(dtype)
    target_c = target if target.dtype == dtype else target.to(dtype)
    grad_on = torch.is_grad_enabled()
    rows = chunk_rows_for(student.shape[0], student.shape[1], student.device, chunk_size)
    return FusedKL.apply(
        student_c, target_c, temperature, rows, grad_on and student_c.requires_grad, grad_on and target_c.requires_grad
    )
