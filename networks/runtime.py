"""How to run a network fast: mixed precision, channels_last, torch.compile, TF32, fused Adam.

None of this changes what is computed, only how (`config.runtime`, read by
`RuntimeOptions.from_config`):

    precision      'fp32' (default), 'bf16' or 'fp16': the network runs under
                   torch.autocast(dtype) (matmuls and convolutions in that dtype). The weights stay
                   fp32 (never model.to(bfloat16): the Fourier time embedding's phases 2 pi W log
                   sigma need fp32), and the parts where precision matters stay fp32: the noise
                   labels, the division by the marginal std (`ScoreFunction`), the sampler's or
                   ODE's state and the likelihood's divergence sum (the score comes back fp32).
                   'bf16' needs no loss scaling; 'fp16' does when training (torch.amp.GradScaler).
                   For training and fixed-step samplers (PC, Heun, DPM-Solver++): the score moves
                   by ~0.7% and the samples' distribution error does not change. Keep adaptive
                   solvers (the 'ode' sampler, `log_likelihood`) in fp32: bf16 rounding noise
                   defeats their error control at rtol 1e-5 (5-10x the NFE, 5x the likelihood
                   error on the exact-score Gaussian; benchmarks/RESULTS.md).
    channels_last  NHWC layout for convolution weights and the network's input (the score comes
                   back in the input's layout).
    compile        torch.compile the network (`compile_mode`: None/'default', 'reduce-overhead'
                   = CUDA graphs for fixed-shape loops, 'max-autotune', ...; `compile_backend`).
    tf32           TF32 for the fp32 matmuls/convolutions left on CUDA (default: on when
                   precision is not 'fp32'; `set_fast_math`).

Typical use (sampling):

    options = RuntimeOptions.from_config(config)
    restore = set_fast_math(options, device)              # returns the previous state
    model = prepare_model(model, options)
    score_fn = get_score_fn(sde, model, continuous, **options.score_options())

and in training, `torch.optim.Adam(..., **fused_adam_kwargs(device))` and the loss's score
function built with `options.score_options()` (or `network_fn(model, ...)` for the discrete
SMLD/DDPM losses, which call the network directly).
"""

import contextlib
import dataclasses
import sys

import torch

from configs import resolve_device

# precision name -> autocast dtype (None: no autocast).
PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
_PRECISION_ALIASES = {'float32': 'fp32', 'bfloat16': 'bf16', 'float16': 'fp16', 'half': 'fp16'}
COMPILE_MODES = (None, 'default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


def canonical_precision(precision):
    """'fp32' | 'bf16' | 'fp16' from that name, a torch dtype name ('bfloat16', ...) or a dtype."""
    if isinstance(precision, torch.dtype):
        precision = str(precision).replace('torch.', '')
    name = _PRECISION_ALIASES.get(str(precision).lower(), str(precision).lower())
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return name


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    """How to run the network (see the module docstring). `tf32=None`: on when precision is not
    'fp32' (the user already accepts reduced precision), off otherwise (fp32 numbers unchanged)."""

    precision: str = 'fp32'
    compile: bool = False
    channels_last: bool = False
    compile_mode: str = None
    compile_backend: str = 'inductor'
    fullgraph: bool = False
    tf32: bool = None

    def __post_init__(self):
        object.__setattr__(self, 'precision', canonical_precision(self.precision))
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got "
                             f"{self.compile_mode!r}")
        for name in ('compile', 'channels_last', 'fullgraph'):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.tf32 is not None and not isinstance(self.tf32, bool):
            raise ValueError(f"tf32 must be a bool or None, got {self.tf32!r}")

    @classmethod
    def from_config(cls, config):
        """From `config.runtime` (precision, compile, channels_last; optional compile_mode,
        compile_backend, fullgraph, tf32; other fields there are not this class's and are
        ignored). A config without `runtime` gives the defaults."""
        runtime = config.get('runtime', None) if hasattr(config, 'get') else None
        if runtime is None:
            return cls()
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        return cls(**{k: runtime.get(k, default) for k, default in fields.items()})

    @property
    def autocast_dtype(self):
        """The autocast dtype, or None for fp32."""
        return PRECISIONS[self.precision]

    @property
    def use_tf32(self):
        return self.precision != 'fp32' if self.tf32 is None else self.tf32

    @property
    def is_fast(self):
        """Whether anything differs from plain fp32 eager execution."""
        return self.precision != 'fp32' or self.compile or self.channels_last or self.use_tf32

    def score_options(self):
        """Keyword arguments of `networks.get_score_fn` / `network_fn` for these options."""
        return {'precision': self.precision, 'channels_last': self.channels_last}


# ------------------------------------------------------------------------- the network call


def autocast(precision, device_type):
    """torch.autocast(device_type, dtype) for 'bf16'/'fp16'; a no-op context for 'fp32'."""
    dtype = PRECISIONS[canonical_precision(precision)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def call_network(model, x, labels, precision='fp32', channels_last=False):
    """model(x, labels) under `autocast(precision)`, with x in NHWC layout if `channels_last`.

    The output comes back in x's dtype (fp32 for fp32 input, whatever the autocast dtype) and,
    when x is contiguous, contiguous: callers' arithmetic on it stays in fp32 and NCHW. With
    precision 'fp32' and channels_last False this is exactly model(x, labels)."""
    precision = canonical_precision(precision)
    inp = x
    if channels_last and x.dim() == 4:
        inp = x.contiguous(memory_format=torch.channels_last)
    with autocast(precision, x.device.type):
        out = model(inp, labels)
    if precision != 'fp32' and out.dtype != x.dtype:
        out = out.to(x.dtype)
    if channels_last and x.is_contiguous() and not out.is_contiguous():
        out = out.contiguous()
    return out


def network_fn(model, precision='fp32', channels_last=False):
    """fn(x, labels) = call_network(model, x, labels, precision, channels_last): the network as
    the discrete SMLD/DDPM losses call it."""
    precision = canonical_precision(precision)
    if precision == 'fp32' and not channels_last:
        return model

    def fn(x, labels):
        return call_network(model, x, labels, precision, channels_last)

    return fn


# ------------------------------------------------------------------------- model and process


def prepare_model(model, options):
    """The model made ready for `options`: weights in channels_last layout (in place, as
    `Module.to` does) and/or wrapped in torch.compile(mode, backend, fullgraph, dynamic=False).
    Train/eval mode is left as it is (a compiled wrapper forwards .train()/.eval() to the
    model). Save checkpoints and build the EMA from `unwrap_model(model)`: a compiled wrapper's
    state_dict keys carry an '_orig_mod.' prefix.

    compile_mode 'reduce-overhead' replays CUDA graphs, which reuse their output buffers on the
    next call: the bf16/fp16 score and the VP/sub-VP score are fresh tensors, but an fp32 VE
    score is the network's own output, so a sampler that keeps one across calls must clone it
    (PyTorch raises an error naming this otherwise)."""
    if not isinstance(options, RuntimeOptions):
        raise TypeError(f"options must be a RuntimeOptions, got {type(options).__name__}")
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if options.compile:
        mode = None if options.compile_mode == 'default' else options.compile_mode
        model = torch.compile(model, mode=mode, backend=options.compile_backend,
                              fullgraph=options.fullgraph, dynamic=False)
    return model


def unwrap_model(model):
    """The network inside DataParallel / DistributedDataParallel (`.module`) and torch.compile
    (`._orig_mod`) wrappers, however nested; any other module as it is. The wrappers' state-dict
    keys carry extra prefixes ('module.', '_orig_mod.'); the network's own do not."""
    parallel = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    while True:
        # A compiled module exists only once torch._dynamo is loaded: no import here.
        dynamo = sys.modules.get('torch._dynamo.eval_frame')
        if isinstance(model, parallel):
            model = model.module
        elif dynamo is not None and isinstance(model, dynamo.OptimizedModule):
            model = model._orig_mod
        else:
            return model


def _tf32_switches():
    """[(namespace, attribute, fast value)] of the TF32 switches this torch has: the
    `fp32_precision` API where present (mixing it with the legacy `allow_tf32` flags is an
    error in recent torch), else `allow_tf32`."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    conv = getattr(cudnn, 'conv', None)
    if hasattr(matmul, 'fp32_precision') and conv is not None and hasattr(conv, 'fp32_precision'):
        return [(matmul, 'fp32_precision', 'tf32'), (conv, 'fp32_precision', 'tf32')]
    return [(matmul, 'allow_tf32', True), (cudnn, 'allow_tf32', True)]


def set_fast_math(options, device=None):
    """On CUDA: TF32 for fp32 matmuls and convolutions when `options.use_tf32`, and
    cudnn.benchmark (autotuned convolution algorithms for fixed shapes) when `options.is_fast`.
    Never switches anything off. `device` defaults to CUDA when available; on any other device
    nothing changes. Returns the previous state: `restore_fast_math(state)` puts it back."""
    if device is None:
        device = resolve_device('auto')
    if torch.device(device).type != 'cuda':
        return []
    changes = []
    if options.use_tf32:
        changes += _tf32_switches()
    if options.is_fast:
        changes.append((torch.backends.cudnn, 'benchmark', True))
    state = []
    for namespace, name, value in changes:
        state.append((namespace, name, getattr(namespace, name)))
        setattr(namespace, name, value)
    return state


def restore_fast_math(state):
    """Undo `set_fast_math` (its return value), in reverse order."""
    for namespace, name, value in reversed(state):
        setattr(namespace, name, value)


@contextlib.contextmanager
def fast_math(options, device=None):
    """`set_fast_math` for the duration of a `with` block."""
    state = set_fast_math(options, device)
    try:
        yield
    finally:
        restore_fast_math(state)


def fused_adam_kwargs(device):
    """{'fused': True} on CUDA (one kernel for the whole Adam update), {} elsewhere."""
    return {'fused': True} if torch.device(device).type == 'cuda' else {}


__all__ = [
    'RuntimeOptions', 'PRECISIONS', 'COMPILE_MODES', 'canonical_precision', 'autocast',
    'call_network', 'network_fn', 'prepare_model', 'unwrap_model', 'set_fast_math',
    'restore_fast_math', 'fast_math', 'fused_adam_kwargs',
]
