"""Progress bars of the samplers (tqdm when asked for, else a stand-in that does nothing), and
the report of a finished step."""

from solvers.shapes import time_vector


def progress_bar(total=None, enabled=False, desc=None):
    """A tqdm bar when `enabled`, else a do-nothing stand-in with the same `update`/`close`."""
    if not enabled:
        return NoBar()
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False)


class NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass


def step_done(i, t_next, x, callback, bar):
    """Report a finished step of a deterministic sampler: `callback(i, t, x, x_mean)` with
    x_mean = x, and one tick of the progress bar."""
    if callback is not None:
        callback(i, time_vector(t_next, x), x, x)
    bar.update()
