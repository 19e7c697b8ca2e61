"""Parameter sets shared by several test files."""


def pc_cases(steps):
    """(sde name, sampler options): one predictor-corrector pair per SDE, covering every
    predictor kind and both corrector choices."""
    return [("ve", dict(predictor="reverse_diffusion", corrector="langevin", steps=steps)),
            ("vp", dict(predictor="ancestral_sampling", corrector="none", steps=steps)),
            ("subvp", dict(predictor="euler_maruyama", corrector="langevin", steps=steps))]
