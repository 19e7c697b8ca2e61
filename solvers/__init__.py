"""Samplers of score-based models (Song et al. 2021): predictor-corrector, the probability-flow
ODE, and fast samplers (EDM Heun, DPM-Solver++, an adaptive SDE solver).

    from solvers import sample, encode, decode
    res = sample(score_fn, sde, (64, 3, 32, 32), sampler="pc", generator=g)   # res.samples, res.nfe
    res = sample(score_fn, sde, shape, sampler="dpm_solver++", steps=20)
    z, nfe = encode(score_fn, sde, x);  x_back = decode(score_fn, sde, z).samples

`score_fn(x, t)` is any callable returning grad_x log p_t(x) for x [B, ...] and t [B].
Predictors, correctors, samplers and time grids live in name registries
(`register_predictor`, `register_corrector`, `register_sampler`, `register_grid`); a sampler or
corrector is declared with its options (`Option`: type, default, help) once, in `declared`.
Modules: predictors, correctors, pc, ode, flow (the probability-flow ODE and its one
integrator), fast (heun, dpm_solver++), unipc, adaptive, grids, fitted_grid (fit_grid: a time
grid fitted to a model), declared, sampling; shared by them: common (the (alpha, sigma) form of
an SDE, Tweedie's denoiser), noise (seeded draws), evaluations (NFE counting, NaN/inf checks),
progress (bars), shapes (time vectors, batch chunks, shape probes).
"""

from solvers.adaptive import adaptive
from solvers.annealed import annealed_inpaint, annealed_langevin, annealed_levels, from_advice
from solvers.common import coefficients, denoise_tweedie, with_steps
from solvers.correctors import CORRECTORS, get_corrector, register_corrector
from solvers.declared import Option, Sampler, get_sampler
from solvers.evaluations import CountingScore, NonFiniteError
from solvers.fast import dpm_solver_pp, heun
from solvers.unipc import unipc
from solvers.fitted_grid import GridFit, fit_grid
from solvers.grids import GRIDS, get_grid, register_grid
from solvers.flow import probability_flow_drift
from solvers.ode import decode, encode, integrate, ode_sampler
from solvers.pc import pc_sampler
from solvers.predictors import PREDICTORS, get_predictor, register_predictor
from solvers.result import EncodeResult, SampleResult
from solvers.sampling import SAMPLERS, register_sampler, sample, with_rows
# Conditional generation on the same samplers: operators (solvers/operators.py), posterior
# samplers (solvers/inverse.py), inpainting, colorization and class guidance
# (solvers/conditional.py). Classifiers: networks.classifier (model, files) and
# training.classifier (training).
from solvers.conditional import (class_conditional, classifier_grad_fn, colorize, inpaint,
                                 mixture_classifier_grad_fn)
from solvers.inverse import linear_inverse, posterior_score
from solvers.operators import (COLOR_BASIS, Blur, Colorization, FunctionOperator, LinearOperator,
                               Mask, MatrixOperator, SuperResolution)


def list_predictors():
    return PREDICTORS.names()


def list_correctors():
    return CORRECTORS.names()


def list_samplers():
    return SAMPLERS.names()


__all__ = ["annealed_inpaint", "annealed_langevin", "annealed_levels", "from_advice",
           "COLOR_BASIS", "Blur", "Colorization", "FunctionOperator", "LinearOperator", "Mask",
           "MatrixOperator", "SuperResolution", "posterior_score",
           "classifier_grad_fn", "mixture_classifier_grad_fn", "CORRECTORS", "CountingScore",
           "NonFiniteError", "EncodeResult", "GRIDS", "PREDICTORS", "SAMPLERS",
           "SampleResult", "adaptive", "class_conditional", "coefficients", "colorize", "decode",
           "denoise_tweedie", "dpm_solver_pp", "encode", "get_corrector", "get_grid",
           "get_predictor", "heun", "inpaint", "integrate", "linear_inverse", "list_correctors",
           "list_predictors", "list_samplers", "ode_sampler", "pc_sampler",
           "probability_flow_drift", "register_corrector", "register_grid", "register_predictor",
           "register_sampler", "sample", "unipc", "with_steps", "GridFit", "fit_grid", "Option",
           "Sampler", "get_sampler", "with_rows"]
