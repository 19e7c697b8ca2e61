"""Result objects of the samplers."""

import dataclasses

import torch


class _Pair:
    """Unpacks as its first field and `nfe`: `samples, nfe = result`."""

    def __iter__(self):
        return iter((getattr(self, dataclasses.fields(self)[0].name), self.nfe))


@dataclasses.dataclass(frozen=True)
class SampleResult(_Pair):
    """samples: [B, ...]; nfe: score evaluations per sample (the most any batch chunk took);
    info: the sampler's settings and details (eps, steps, nfe of each batch chunk, ...).
    Unpacks as `samples, nfe = result`."""

    samples: torch.Tensor
    nfe: int
    info: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class EncodeResult(_Pair):
    """z: the latent x(T) of data x(eps) under the probability-flow ODE; nfe: score evaluations.
    Unpacks as `z, nfe = result`."""

    z: torch.Tensor
    nfe: int
    info: dict = dataclasses.field(default_factory=dict)
