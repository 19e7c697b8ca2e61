"""Divergence of a vector field f(x) per sample: Hutchinson-Skilling estimates or the exact trace.

    div f(x) = tr(df/dx) = E_v[v^T (df/dx) v]   for any probe v with E[v v^T] = I

(Hutchinson 1989, Skilling 1989). v^T (df/dx) is one vector-Jacobian product (a backward pass), so
K probes cost one forward and K backward passes. The exact trace sums e_i^T (df/dx) e_i over the
D basis vectors, D vector-Jacobian products done in chunks of copies of the batch.

`fn(x, t)` must treat batch entries independently (eval-mode normalisation): traces are read off
the gradient of a batch sum, as in the original.
"""

import torch

from likelihood.draws import draw

ESTIMATORS = ("rademacher", "gaussian", "exact")


def random_projections(shape, noise_type="rademacher", generator=None, device=None,
                       dtype=torch.float32):
    """Probe vectors with E[v v^T] = I: Rademacher (+-1) or standard Gaussian. Hutchinson's
    estimator here and sliced score matching (training/objectives.py) both draw them."""
    if noise_type == "rademacher":
        v = torch.randint(0, 2, shape, generator=generator, device=device).to(dtype)
        return 2.0 * v - 1.0
    if noise_type == "gaussian":
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    raise ValueError(f"noise_type must be 'rademacher' or 'gaussian', got {noise_type!r}")


def draw_probes(n, x, kind="rademacher", generator=None):
    """n probes [n, *x.shape] (Rademacher +-1 or standard Gaussian) in x's dtype and device.

    They are drawn on the generator's device (x's device without one) and then moved, so a CPU
    generator gives the same probes on every device; with a `RowGenerators`, sample b's probes
    come from generator b (`likelihood.draws`)."""
    if kind not in ("rademacher", "gaussian"):
        raise ValueError(f"probe kind must be 'rademacher' or 'gaussian', got {kind!r}")
    def sample(shape, g, device):
        return random_projections(shape, kind, g, device, x.dtype)

    return draw(sample, (n,) + tuple(x.shape), generator, x.device, batch_dim=1)


def _output(fn, x, t):
    f = fn(x, t)
    if not torch.is_tensor(f) or f.shape != x.shape:
        got = tuple(f.shape) if torch.is_tensor(f) else type(f).__name__
        raise ValueError(f"the vector field must return the input's shape {tuple(x.shape)}, "
                         f"got {got}")
    if not f.requires_grad:
        raise ValueError("the vector field's output does not depend differentiably on x: is the "
                         "score function run under torch.no_grad() or does it detach its input?")
    return f


def hutchinson_divergence(fn, x, t, probes):
    """f = fn(x, t) and the estimates v_k^T (df/dx) v_k for probes [K, B, ...]: (f, [K, B])."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        f = _output(fn, x, t)
        div = []
        for k, v in enumerate(probes):
            (vjp,) = torch.autograd.grad(f, x, grad_outputs=v, retain_graph=k < len(probes) - 1)
            div.append((vjp * v).flatten(1).sum(1))
    return f.detach(), torch.stack(div)


def exact_divergence(fn, x, t, chunk=None):
    """f = fn(x, t) and tr(df/dx) per sample ([B]), exactly.

    Basis vectors go `chunk` at a time (default: as many as keep the stacked batch within 1024
    rows): the batch is repeated once per basis vector e_i, and one backward pass with e_i as the
    output gradient of copy i yields row i of every sample's Jacobian."""
    B, D = x.shape[0], x[0].numel()
    chunk = max(1, 1024 // B) if chunk is None else int(chunk)
    if chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk}")
    rows = torch.arange(B, device=x.device)
    trace = torch.zeros(B, dtype=x.dtype, device=x.device)
    f0 = None
    with torch.enable_grad():
        for start in range(0, D, chunk):
            m = min(chunk, D - start)
            xr = x.detach().repeat((m,) + (1,) * (x.dim() - 1)).requires_grad_(True)
            f = _output(fn, xr, t.repeat(m))
            basis = torch.zeros(m, B, D, dtype=x.dtype, device=x.device)
            idx = torch.arange(start, start + m, device=x.device)
            basis[torch.arange(m, device=x.device)[:, None], rows[None, :], idx[:, None]] = 1
            (vjp,) = torch.autograd.grad(f, xr, grad_outputs=basis.reshape(f.shape))
            trace += (vjp.reshape(m, B, D) * basis).sum((0, 2))
            if f0 is None:
                f0 = f[:B].detach()
    return f0, trace
