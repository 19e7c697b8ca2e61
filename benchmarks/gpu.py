"""GPU speed: fp32 eager against the fast path (networks/runtime.py), side by side.

    python -m benchmarks.gpu --config vp/cifar10_ddpmpp_continuous --what all \\
        --batch 128 512 --train-batch 128 --precision bf16 --channels-last --compile

(run as a module from the repository root). For every case it builds the config's network
(seed `config.seed`, random weights: speed does not depend on them) once as plain fp32 eager
(PyTorch's default switches: TF32 off for matmuls, on for cuDNN convolutions; the original's
conditions) and once with the fast options given here (autocast `--precision`, `--channels-last`,
`--compile [--compile-mode M]`, TF32 and cudnn.benchmark through `set_fast_math`, fused Adam).

Cases (`--what`):
  forward  the score function at each `--batch` (eval mode, no grad);
  train    one training step at `--train-batch`: the config's loss (training.losses: DSM for
           continuous configs, SMLD/DDPM for discrete), backward, Adam with the config's warm-up
           and gradient clipping (training.optim.optimize_step), EMA update; plus the EMA update
           alone, networks.ema's per-parameter loop against one torch._foreach_lerp_;
  sample   a full run of each `--samplers` at the first `--batch`: 'pc' with the config's
           predictor/corrector/snr and `--steps` (default N), 'heun'/'dpm_solver++' with their
           default steps or `--fast-steps`;
  precision  "same numbers": the fast path's score against fp32 (relative L2 and max errors) on
           the NCSN++ fixture in tests/data and on the config's full-size network (random weights,
           `--batch` images), and samplers and the likelihood driven by an exact-score Gaussian
           whose two matmuls run under the same autocast (`GaussianNoiseNet`): distribution
           errors, NFE of the adaptive solvers, log-likelihood error. Not part of 'all'.
Columns: milliseconds per call (median of `--repeats` after `--warmup` calls; CUDA events on a
GPU, process CPU time on a CPU), images/s, achieved TFLOP/s (FLOPs of matmuls, convolutions and
attention per image counted once with torch.utils.flop_counter.FlopCounterMode on the fp32
eager network, forward or forward + backward, times the NFE for sampling), peak memory
(torch.cuda.max_memory_allocated after a reset just before the case: weights, optimizer state
and activations), and the fast path's speed-up. On a CPU it runs too, at tiny sizes, as a smoke
test (`--override` shrinks the config; memory is not reported there).
"""

import argparse
import datetime
import math
import platform
import shlex
import statistics
import sys
import time

if not __package__:
    sys.exit("run as a module from the repository root: python -m benchmarks.gpu")

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import configs
import networks
from networks import runtime
from networks.runtime import RuntimeOptions
from sde_lib import VESDE, VPSDE, get_sde, oracle
from sde_base.fileio import write_text

BASELINE = RuntimeOptions()
ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DIR = ROOT / "tests" / "data" / "score_sde_pytorch"  # original code's NCSN++ and outputs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="vp/cifar10_ddpmpp_continuous")
    p.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. model.nf=16 (to shrink it for a CPU smoke run)")
    p.add_argument("--what", nargs="+", default=["all"],
                   choices=["forward", "train", "sample", "precision", "all"])
    p.add_argument("--batch", type=int, nargs="+", default=[128, 512],
                   help="forward batches; the first is also the sampling batch")
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--samplers", nargs="+", default=["pc", "heun", "dpm_solver++"])
    p.add_argument("--steps", type=int, default=None, help="PC steps (default: the SDE's N)")
    p.add_argument("--fast-steps", type=int, default=None,
                   help="steps of the other samplers (default: their own)")
    p.add_argument("--precision", default="bf16", choices=sorted(runtime.PRECISIONS))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile-mode", default=None,
                   choices=[m for m in runtime.COMPILE_MODES if m])
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--fullgraph", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-tf32", action="store_true", help="keep TF32 off on the fast path")
    p.add_argument("--no-baseline", action="store_true", help="time the fast path only")
    p.add_argument("--device", default="auto")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--sample-repeats", type=int, default=1)
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="print the fast path's top ROWS operators (torch.profiler) per case")
    p.add_argument("--output", default=None, help="also write the markdown table to this file")
    args = p.parse_args(argv)
    if "all" in args.what:
        args.what = ["forward", "train", "sample"] + [w for w in args.what if w == "precision"]
    if min(args.batch) < 1 or args.train_batch < 1 or args.repeats < 1:
        p.error("--batch, --train-batch and --repeats must be positive")
    return args


# ------------------------------------------------------------------------------ measuring


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device, warmup, repeats):
    """(median milliseconds per call, peak bytes or None): `warmup` untimed calls, then
    `repeats` timed ones (CUDA events on a GPU; process CPU time elsewhere)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.process_time()
            fn()
            times.append(1e3 * (time.process_time() - t0))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return statistics.median(times), peak


def count_flops(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def profile(fn, device, rows, title):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    fn()
    synchronize(device)
    with torch_profile(activities=activities) as prof:
        fn()
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\n### profile: {title}\n")
    print(prof.key_averages().table(sort_by=key, row_limit=rows))


# ------------------------------------------------------------------------------ the cases


class Bench:
    """The config, SDE and device shared by every case."""

    def __init__(self, args):
        self.args = args
        self.config = configs.load_config(args.config, args.override or None)
        self.device = torch.device(configs.resolve_device(args.device))
        self.sde = get_sde(self.config)
        self.continuous = bool(self.config.training.get("continuous", True))
        c = self.config.data
        self.shape = (c.num_channels, c.image_size, c.image_size)
        self.fast = RuntimeOptions(precision=args.precision, compile=args.compile,
                                   channels_last=args.channels_last, compile_mode=args.compile_mode,
                                   compile_backend=args.compile_backend, fullgraph=args.fullgraph,
                                   tf32=False if args.no_tf32 else None)

    def model(self, options, train=False):
        torch.manual_seed(self.config.seed)
        model = networks.create_model(self.config, device=self.device)
        model.train(train)
        if not train:
            model.requires_grad_(False)
        return runtime.prepare_model(model, options)

    def data(self, batch, seed=0):
        g = torch.Generator(device=self.device).manual_seed(seed)
        x = torch.rand((batch,) + self.shape, generator=g, device=self.device)
        return 2 * x - 1 if self.config.data.centered else x

    def times(self, batch):
        g = torch.Generator(device=self.device).manual_seed(1)
        eps = self.sde.sampling_eps
        return torch.rand(batch, generator=g, device=self.device) * (self.sde.T - eps) + eps

    def score_fn(self, model, options):
        return networks.get_score_fn(self.sde, model, continuous=self.continuous,
                                     **options.score_options())

    # forward -----------------------------------------------------------------------------
    def forward_fn(self, model, options, batch):
        score_fn = self.score_fn(model, options)
        x, t = self.data(batch), self.times(batch)

        @torch.no_grad()
        def fn():
            return score_fn(x, t)
        return fn

    def forward_flops(self):
        if not hasattr(self, "_forward_flops"):
            model = self.model(BASELINE)
            self._forward_flops = count_flops(self.forward_fn(model, BASELINE, 1))
        return self._forward_flops

    # train -------------------------------------------------------------------------------
    def loss_fn(self, model, options):
        """loss(batch, generator): the config's training loss, with the network run as
        `options` say (the DSM loss through the score function, SMLD/DDPM through the net)."""
        from training.losses import ddpm_loss, dsm_loss, get_loss_fn, smld_loss
        spec = get_loss_fn(self.config, self.sde)
        if spec.kind == "dsm":
            score_fn = self.score_fn(model, options)
            return lambda batch, g: dsm_loss(
                score_fn, self.sde, batch, reduce_mean=spec.reduce_mean,
                likelihood_weighting=spec.likelihood_weighting, eps=spec.eps, generator=g)
        loss = smld_loss if spec.kind == "smld" else ddpm_loss
        net = runtime.network_fn(model, **options.score_options())
        return lambda batch, g: loss(net, self.sde, batch, reduce_mean=spec.reduce_mean,
                                     generator=g)

    def train_fn(self, options, batch):
        from training.optim import optimize_step
        model = self.model(options, train=True)
        base = runtime.unwrap_model(model)
        params = list(base.parameters())
        o = self.config.optim
        fused = runtime.fused_adam_kwargs(self.device) if options.is_fast else {}
        optimizer = torch.optim.Adam(params, lr=o.lr, betas=(o.beta1, 0.999), eps=o.eps,
                                     weight_decay=o.weight_decay, **fused)
        ema = networks.ExponentialMovingAverage(params, decay=self.config.model.ema_rate)
        loss_fn = self.loss_fn(model, options)
        x = self.data(batch)
        g = torch.Generator(device=self.device).manual_seed(2)
        state = {"step": 0}

        def fn():
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(x, g)
            loss.backward()
            state["step"] += 1
            optimize_step(optimizer, params, state["step"], lr=o.lr, warmup=o.warmup,
                          grad_clip=o.grad_clip)
            ema.update(params)
            return loss
        return fn, model

    def train_flops(self):
        if not hasattr(self, "_train_flops"):
            model = self.model(BASELINE, train=True)
            loss_fn = self.loss_fn(model, BASELINE)
            x = self.data(2)
            g = torch.Generator(device=self.device).manual_seed(2)
            self._train_flops = count_flops(lambda: loss_fn(x, g).backward()) / 2
        return self._train_flops

    def ema_fns(self):
        """networks.ema's update and the same rule as one foreach lerp, on the model's params."""
        model = self.model(BASELINE, train=True)
        params = list(model.parameters())
        ema = networks.ExponentialMovingAverage(params, decay=self.config.model.ema_rate)
        shadow = [p.detach().clone() for p in params]

        def loop():
            ema.update(params)

        @torch.no_grad()
        def foreach():  # shadow <- shadow + (1 - d)(theta - shadow)
            torch._foreach_lerp_(shadow, params, 1.0 - ema.current_decay())
        return loop, foreach

    # sample ------------------------------------------------------------------------------
    def sample_fn(self, model, options, name, batch, steps):
        import solvers
        s = self.config.sampling
        score_fn = self.score_fn(model, options)
        kwargs = dict(sampler=name, device=self.device, check_shape=False,
                      denoise=bool(s.get("noise_removal", True)))
        if name == "pc":
            kwargs.update(predictor=s.predictor, corrector=s.corrector, snr=s.snr,
                          n_corrector_steps=s.n_steps_each)
        if steps is not None:
            kwargs["steps"] = steps

        def fn():
            g = torch.Generator(device=self.device).manual_seed(3)
            return solvers.sample(score_fn, self.sde, (batch,) + self.shape, generator=g, **kwargs)
        return fn


# ------------------------------------------------------------------------------ running


def describe(options, device, train=False):
    """The settings in effect (TF32 and cudnn.benchmark act on CUDA only)."""
    if options == BASELINE:
        return "fp32 eager"
    parts = [options.precision]
    if options.channels_last:
        parts.append("channels_last")
    if options.compile:
        parts.append(f"compile({options.compile_mode or 'default'}, {options.compile_backend})")
    if device.type == "cuda" and options.use_tf32:
        parts.append("tf32")
    if train and device.type == "cuda" and options.is_fast:
        parts.append("fused Adam")
    return " + ".join(parts)


def row(what, batch, path, settings, ms, peak, flops_per_image, nfe=None):
    images_per_s = None if batch is None else 1e3 * batch / ms
    tflops = None if flops_per_image is None else flops_per_image * (nfe or 1) * images_per_s / 1e12
    return dict(what=what, batch=batch, path=path, settings=settings, ms=ms,
                images_per_s=images_per_s, tflops=tflops, peak_bytes=peak, nfe=nfe)


def paths(bench):
    out = [] if bench.args.no_baseline else [("fp32-eager", BASELINE)]
    return out + [("fast", bench.fast)]


def release(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_forward(bench, rows):
    a, device = bench.args, bench.device
    flops = bench.forward_flops()
    for batch in a.batch:
        for path, options in paths(bench):
            with runtime.fast_math(options, device):
                model = bench.model(options)
                fn = bench.forward_fn(model, options, batch)
                ms, peak = measure(fn, device, a.warmup, a.repeats)
                if a.profile and path == "fast":
                    profile(fn, device, a.profile, f"forward, batch {batch}, "
                        f"{describe(options, device)}")
            rows.append(row("forward", batch, path, describe(options, device), ms, peak, flops))
            del model, fn
            release(device)


def run_train(bench, rows):
    a, device = bench.args, bench.device
    if bench.fast.precision == "fp16":
        print("(train skipped for fp16: it needs loss scaling, which the training loop does not "
              "do; use bf16)")
        return
    flops = bench.train_flops()
    for path, options in paths(bench):
        with runtime.fast_math(options, device):
            fn, model = bench.train_fn(options, a.train_batch)
            ms, peak = measure(fn, device, a.warmup, a.repeats)
            if a.profile and path == "fast":
                profile(fn, device, a.profile, f"train step, batch {a.train_batch}, "
                        f"{describe(options, device)}")
        rows.append(row("train", a.train_batch, path, describe(options, device, train=True), ms,
                        peak, flops))
        del model, fn
        release(device)
    loop, foreach = bench.ema_fns()
    for path, fn in (("networks.ema loop", loop), ("foreach lerp", foreach)):
        ms, peak = measure(fn, device, a.warmup, a.repeats)
        rows.append(row("ema update", None, path, "fp32, the model's parameters", ms, peak, None))
    release(device)


def run_sample(bench, rows):
    a, device = bench.args, bench.device
    flops = bench.forward_flops()
    batch = a.batch[0]
    for name in a.samplers:
        steps = a.steps if name == "pc" else a.fast_steps
        for path, options in paths(bench):
            with runtime.fast_math(options, device):
                model = bench.model(options)
                # warm-up (and compile) on a short run (PC on VP needs beta_max / steps < 1)
                short = min(25, steps or bench.sde.N) if name == "pc" else 2
                bench.sample_fn(model, options, name, batch, short)()
                fn = bench.sample_fn(model, options, name, batch, steps)
                results = []
                ms, peak = measure(lambda: results.append(fn()), device, 0, a.sample_repeats)
            rows.append(row(f"sample {name}", batch, path, describe(options, device), ms, peak,
                            flops, nfe=results[0].nfe))
            del model, fn, results
            release(device)


class GaussianNoiseNet(nn.Module):
    """The exact noise predictor of Gaussian data N(mu, U diag(lam) U^T) under a VP-type SDE,
    shaped like a score network (continuous VP convention, label 999 t), with its two products
    with U as matmuls that autocast runs in low precision:

        net(x, 999 t) = sigma U diag(1 / (alpha^2 lam + sigma^2)) U^T (x - alpha mu),

    so that -net / sigma is the exact score (alpha, sigma of `sde.marginal_prob`)."""

    def __init__(self, sde, mean, cov):
        super().__init__()
        lam, U = torch.linalg.eigh(torch.as_tensor(cov, dtype=torch.float64))
        self.sde = sde
        self.register_buffer("mean", torch.as_tensor(mean).float().flatten())
        self.register_buffer("U", U.float())
        self.register_buffer("lam", lam.float())

    def forward(self, x, labels):
        t = labels / 999
        alpha, sigma = self.sde.marginal_prob(torch.ones(x.shape[0], 1, device=x.device), t)
        sigma = sigma[:, None]
        y = F.linear(x.flatten(1) - alpha * self.mean, self.U.t())
        y = y / (alpha ** 2 * self.lam + sigma ** 2)
        return (sigma * F.linear(y, self.U)).reshape(x.shape)


def gaussian_problem(dim=16, seed=0):
    """(mean, covariance) of the D = 16 test Gaussian (eigenvalues log-uniform in [0.05, 1])."""
    g = torch.Generator().manual_seed(seed)
    cov = oracle.random_covariance(dim, generator=g, min_eig=0.05)
    return 0.5 * torch.randn(dim, generator=g, dtype=torch.float64), cov


def distribution_errors(samples, mean, cov):
    """(|sample mean - mean|, |sample covariance - cov|_F) and their Monte Carlo std scales
    sqrt(tr cov / n), sqrt(((tr cov)^2 + |cov|_F^2) / n)."""
    s = samples.flatten(1).double().cpu()
    n = s.shape[0]
    errors = ((s.mean(0) - mean).norm().item(), (torch.cov(s.T) - cov).norm().item())
    scales = (math.sqrt(torch.trace(cov).item() / n),
              math.sqrt((torch.trace(cov) ** 2 + (cov ** 2).sum()).item() / n))
    return errors, scales


def rel_errors(got, want):
    d = (got.double() - want.double())
    want = want.double()
    return (d.norm() / want.norm()).item(), (d.abs().max() / want.abs().max()).item()


def run_precision(bench, rows):
    """Rows of the "same numbers" table: (quantity, fp32 eager, fast path)."""
    import json

    import solvers
    from likelihood import log_likelihood
    device, fast = bench.device, bench.fast
    fmt_rel = lambda e: f"rel L2 {e[0]:.2e}, rel max {e[1]:.2e}"  # noqa: E731
    out = []
    d = FIXTURE_DIR
    if (d / "index.json").is_file():
        entry = json.loads((d / "index.json").read_text())["ve_ncsnpp_cifar"]
        config = configs.load_config(entry["config_module"], entry["overrides"])
        io = torch.load(d / "ve_ncsnpp_cifar.io.pt", weights_only=True)
        m = config.model
        sde = VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales)
        x, t = io["x"].to(device), io["t"].to(device)
        scores = {}
        for path, options in (("fp32", BASELINE), ("fast", fast)):
            model = networks.load_checkpoint(d / "ve_ncsnpp_cifar.pth", config, ema=True,
                                             map_location=device)
            model = runtime.prepare_model(model.eval(), options)
            with torch.no_grad(), runtime.fast_math(options, device):
                scores[path] = networks.get_score_fn(sde, model, entry["continuous"],
                                                     **options.score_options())(x, t)
        ref = io["score_ema"].to(device)
        out.append(("fixture NCSN++ (VE, 16x16, trained) score vs fp32 eager", "0",
                    fmt_rel(rel_errors(scores["fast"], scores["fp32"]))))
        out.append(("fixture score vs the original code's fp32 outputs",
                    fmt_rel(rel_errors(scores["fp32"], ref)),
                    fmt_rel(rel_errors(scores["fast"], ref))))
    else:
        out.append(("fixture NCSN++", "not found", "not found"))

    batch = bench.args.batch[0]
    x, t = bench.data(batch), bench.times(batch)
    scores = {}
    for path, options in (("fp32", BASELINE), ("fast", fast)):
        with torch.no_grad(), runtime.fast_math(options, device):
            scores[path] = bench.score_fn(bench.model(options), options)(x, t)
    out.append((f"{bench.args.config} (random weights) score, batch {batch}, vs fp32 eager", "0",
                fmt_rel(rel_errors(scores["fast"], scores["fp32"]))))
    del scores
    release(device)

    mean, cov = gaussian_problem()
    sde = VPSDE()
    net = GaussianNoiseNet(sde, mean, cov).to(device).eval()
    score = {path: networks.get_score_fn(sde, net, True, precision=o.precision)
             for path, o in (("fp32", BASELINE), ("fast", fast))}
    labels = {"heun": "heun (18 steps, karras grid)",
              "pc": f"pc (reverse_diffusion + langevin, snr 0.16, {sde.N} steps)",
              "ode": "ode (adaptive dopri5, rtol=atol=1e-5)"}
    for name, n, kwargs in (("heun", 4000, {}), ("pc", 4000, {}), ("ode", 1000, {})):
        cells, samples = [], {}
        for path in ("fp32", "fast"):
            r = solvers.sample(score[path], sde, (n, 1, 4, 4), sampler=name, device=device,
                               generator=torch.Generator(device=device).manual_seed(1), **kwargs)
            (em, ec), (sm, sc) = distribution_errors(r.samples, mean, cov)
            samples[path] = r.samples
            cells.append(f"mean err {em:.4f}, cov err {ec:.4f} (MC std ~{sm:.4f}, {sc:.4f}); "
                         f"NFE {r.nfe}")
        diff = rel_errors(samples["fast"], samples["fp32"])[0]
        out.append((f"Gaussian D=16 (exact score), {labels[name]}, n={n}, same seed",
                    cells[0], cells[1] + f"; samples differ by rel L2 {diff:.2e}"))
    p = oracle.gaussian(mean, cov, event_shape=(1, 4, 4)).marginal(sde)
    x = p.sample(torch.full((64,), sde.likelihood_eps), generator=torch.Generator().manual_seed(2))
    exact = p.log_prob(x.double(), torch.full((64,), sde.likelihood_eps, dtype=torch.float64))
    cells = []
    for path in ("fp32", "fast"):
        r = log_likelihood(score[path], sde, x.to(device), estimator="exact")
        err = (r.logp.double().cpu() - exact).abs()
        cells.append(f"mean abs err {err.mean():.4f} nats (max {err.max():.4f}); NFE {r.nfe}")
    out.append(("Gaussian D=16 log-likelihood (exact trace, rtol=atol=1e-5), 64 points", *cells))
    rows.extend(out)


def precision_table(rows, fast, device):
    lines = [f"| quantity | fp32 eager | fast path ({describe(fast, device)}) |", "|---|---|---|"]
    lines += [f"| {q} | {a} | {b} |" for q, a, b in rows]
    return "\n".join(lines)


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def table(rows):
    lines = ["| what | batch | path | settings | NFE | ms | images/s | TFLOP/s | peak GiB | "
             "speed-up |", "|---|---|---|---|---|---|---|---|---|---|"]
    base = {(r["what"], r["batch"]): r["ms"] for r in rows if r["path"] == "fp32-eager"}
    for r in rows:
        ref = base.get((r["what"], r["batch"]))
        speed = ref / r["ms"] if ref and r["path"] == "fast" else None
        peak = None if r["peak_bytes"] is None else r["peak_bytes"] / 2 ** 30
        lines.append(f"| {r['what']} | {fmt(r['batch'], 'd')} | {r['path']} | {r['settings']} | "
                     f"{fmt(r['nfe'], 'd')} | {r['ms']:.4g} | {fmt(r['images_per_s'], '.4g')} | "
                     f"{fmt(r['tflops'], '.3g')} | {fmt(peak, '.2f')} | "
                     f"{'-' if speed is None else f'{speed:.2f}x'} |")
    return "\n".join(lines)


def header(bench, argv):
    d = bench.device
    if d.type == "cuda":
        machine = f"{torch.cuda.get_device_name(d)} (CUDA {torch.version.cuda})"
    else:
        machine = (f"CPU {platform.processor() or platform.machine()}, "
                   f"{torch.get_num_threads()} thread(s)")
    command = "python -m benchmarks.gpu " + " ".join(shlex.quote(x) for x in argv)
    return (f"Machine: {machine}; torch {torch.__version__}; date "
            f"{datetime.date.today().isoformat()}.\nCommand: `{command}`")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    bench = Bench(args)
    rows, checks = [], []
    runners = {"forward": run_forward, "train": run_train, "sample": run_sample}
    for what in args.what:
        if what == "precision":
            run_precision(bench, checks)
        else:
            runners[what](bench, rows)
    text = header(bench, argv) + "\n"
    if rows:
        flops_note = (f"FLOPs per image (matmul/conv/attention, counted on the fp32 eager "
                      f"network): forward {bench.forward_flops() / 1e9:.4g} GFLOP")
        if "train" in args.what and bench.fast.precision != "fp16":
            flops_note += (f", training step (forward + backward) "
                           f"{bench.train_flops() / 1e9:.4g} GFLOP")
        text += f"{flops_note}\n\n{table(rows)}\n"
    if checks:
        text += f"\n{precision_table(checks, bench.fast, bench.device)}\n"
    print(text)
    if args.output:
        write_text(args.output, text)
    return rows


if __name__ == "__main__":
    main()
