"""Diffusers schedulers as the toolkit's SDEs, and the reverse."""

import math

from networks.diffusers.errors import DiffusersError

# Scheduler defaults (diffusers' ScoreSdeVeScheduler, DDPMScheduler, ScoreSdeVpScheduler).
SCORE_SDE_VE_DEFAULTS = {'num_train_timesteps': 2000, 'snr': 0.15, 'sigma_min': 0.01,
                         'sigma_max': 1348.0, 'sampling_eps': 1e-5, 'correct_steps': 1}
DDPM_DEFAULTS = {'num_train_timesteps': 1000, 'beta_start': 0.0001, 'beta_end': 0.02,
                 'beta_schedule': 'linear', 'trained_betas': None, 'prediction_type': 'epsilon'}
SCORE_SDE_VP_DEFAULTS = {'num_train_timesteps': 2000, 'beta_min': 0.1, 'beta_max': 20.0,
                         'sampling_eps': 1e-3}


_POSITIVE = ('sigma_min', 'sigma_max', 'beta_start', 'beta_end', 'beta_min', 'beta_max')


def check_scheduler_values(s, where='scheduler config: '):
    """The values of a scheduler config (defaults filled in) that become an SDE: a positive
    whole num_train_timesteps, finite positive sigmas and betas; DiffusersError naming the key.
    its noise levels must fit in memory. Returns num_train_timesteps as an int."""
    from networks.sizes import ModelConfigError, check_model_config, whole
    for key in _POSITIVE:
        v = s.get(key)
        if key in s and (isinstance(v, bool) or not isinstance(v, (int, float)) or
                         not math.isfinite(v) or v <= 0):
            raise DiffusersError(f"{where}{key} = {v!r}: must be a finite positive number")
    try:
        n = whole('num_train_timesteps', s.get('num_train_timesteps'), 1, where)
        check_model_config({'model': {'num_scales': n}}, what='the SDE of the scheduler')
    except ModelConfigError as e:
        raise DiffusersError(str(e.renamed({'model.num_scales': 'num_train_timesteps'}, where,
                                           s))) from None
    return n


def sde_from_scheduler(scheduler_config, family):
    """(SDE, continuous, notes) from a diffusers scheduler config. ScoreSdeVeScheduler ->
    VESDE(sigma_min, sigma_max, N = num_train_timesteps), continuous; DDPM-style schedulers with
    linear betas -> the discrete VPSDE whose beta_i run from beta_start to beta_end
    (beta_min = N beta_start, beta_max = N beta_end); ScoreSdeVpScheduler -> continuous VPSDE.
    With no scheduler the family's diffusers defaults are used and noted."""
    from sde_lib import VESDE, VPSDE
    notes = []
    if scheduler_config is None:
        name = 'ScoreSdeVeScheduler' if family == 'ncsnpp' else 'DDPMScheduler'
        notes.append(f"no scheduler config found: {name}'s defaults assumed")
        scheduler_config = {'_class_name': name}
    name = scheduler_config.get('_class_name')
    if name is None:  # guess from the fields
        name = 'ScoreSdeVeScheduler' if 'sigma_max' in scheduler_config else (
            'ScoreSdeVpScheduler' if 'beta_max' in scheduler_config else 'DDPMScheduler')
    if name == 'ScoreSdeVeScheduler':
        s = {**SCORE_SDE_VE_DEFAULTS, **scheduler_config}
        check_scheduler_values(s)
        if family != 'ncsnpp':
            raise DiffusersError(f"a {name} with a DDPM network: the toolkit maps VE models "
                                 f"with NCSN++ skip blocks only")
        return VESDE(sigma_min=float(s['sigma_min']), sigma_max=float(s['sigma_max']),
                     N=int(s['num_train_timesteps'])), True, notes
    if name == 'ScoreSdeVpScheduler':
        s = {**SCORE_SDE_VP_DEFAULTS, **scheduler_config}
        check_scheduler_values(s)
        if family != 'ddpm':
            raise DiffusersError(f"a {name} with an NCSN++ (fourier) network is not mapped")
        return VPSDE(beta_min=float(s['beta_min']), beta_max=float(s['beta_max']),
                     N=int(s['num_train_timesteps'])), True, notes
    if 'beta_start' in scheduler_config or name == 'DDPMScheduler':
        s = {**DDPM_DEFAULTS, **scheduler_config}
        check_scheduler_values(s)
        problems = []
        if s['beta_schedule'] != 'linear':
            problems.append(f"beta_schedule {s['beta_schedule']!r} (the VP SDE's discrete "
                            f"betas are linear)")
        if s['trained_betas'] is not None:
            problems.append("trained_betas (an explicit beta list)")
        if s.get('prediction_type', 'epsilon') != 'epsilon':
            problems.append(f"prediction_type {s['prediction_type']!r} (the toolkit's VP "
                            f"convention is noise prediction, 'epsilon')")
        if family != 'ddpm':
            problems.append("an NCSN++ (fourier, sigma-conditioned) network with a beta schedule")
        if problems:
            raise DiffusersError(f"{name} settings that do not map to a VP SDE: "
                                 + '; '.join(problems))
        n = int(s['num_train_timesteps'])
        return VPSDE(beta_min=float(s['beta_start']) * n, beta_max=float(s['beta_end']) * n,
                     N=n), False, notes
    raise DiffusersError(f"scheduler {name!r} does not map to an SDE of the toolkit (known: "
                         f"ScoreSdeVeScheduler, ScoreSdeVpScheduler, DDPMScheduler and "
                         f"schedulers with linear beta_start/beta_end)")


def scheduler_config(config):
    """The diffusers scheduler config dict of a toolkit config's SDE (VE ->
    ScoreSdeVeScheduler, discrete VP -> DDPMScheduler), or a DiffusersError."""
    m, sde = config.model, str(config.training.sde).lower()
    n = int(m.num_scales)
    if sde == 'vesde':
        return {'_class_name': 'ScoreSdeVeScheduler', 'num_train_timesteps': n,
                'sigma_min': float(m.sigma_min), 'sigma_max': float(m.sigma_max),
                'snr': float(config.sampling.snr), 'sampling_eps': 1e-5,
                'correct_steps': int(config.sampling.n_steps_each)}
    if sde == 'vpsde' and not config.training.continuous:
        return {'_class_name': 'DDPMScheduler', 'num_train_timesteps': n,
                'beta_start': float(m.beta_min) / n, 'beta_end': float(m.beta_max) / n,
                'beta_schedule': 'linear', 'trained_betas': None, 'prediction_type': 'epsilon',
                'variance_type': 'fixed_small', 'clip_sample': True}
    if sde == 'vpsde':
        return {'_class_name': 'ScoreSdeVpScheduler', 'num_train_timesteps': n,
                'beta_min': float(m.beta_min), 'beta_max': float(m.beta_max),
                'sampling_eps': 1e-3}
    raise DiffusersError(f"diffusers has no scheduler for the {config.training.sde!r} SDE")


def _convention(family, continuous):
    if family == 'ncsnpp':
        return ("VE, continuous: the network takes sigma(t) and returns the score "
                "(its output is divided by sigma inside)")
    if continuous:
        return ("VP, continuous: the network takes 999 t and predicts the noise; "
                "score = -net / std(t)")
    return ("VP, discrete: the network takes the integer step i = (N - 1) t and predicts the "
            "noise; score = -net / sqrt(1 - alphabar_i)")
