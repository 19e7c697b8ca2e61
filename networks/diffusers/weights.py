"""The written name mapping between the toolkit's NCSN++ / DDPM parameters and diffusers'
UNet2DModel weights, derived from the two architectures."""

import re

import torch

from networks.checkpoint import CheckpointError, _listed, dtype_check
from networks.diffusers.errors import DiffusersError

# Per layer kind: toolkit parameter (relative to the layer) -> (diffusers names relative to the
# diffusers layer, first = the current name, then older spellings; transform).
_SAME = None
_RESNET = {
    'GroupNorm_0.weight': (('norm1.weight',), _SAME), 'GroupNorm_0.bias': (('norm1.bias',), _SAME),
    'Conv_0.weight': (('conv1.weight',), _SAME), 'Conv_0.bias': (('conv1.bias',), _SAME),
    'Dense_0.weight': (('time_emb_proj.weight',), _SAME),
    'Dense_0.bias': (('time_emb_proj.bias',), _SAME),
    'GroupNorm_1.weight': (('norm2.weight',), _SAME), 'GroupNorm_1.bias': (('norm2.bias',), _SAME),
    'Conv_1.weight': (('conv2.weight',), _SAME), 'Conv_1.bias': (('conv2.bias',), _SAME),
    'Conv_2.weight': (('conv_shortcut.weight',), _SAME),
    'Conv_2.bias': (('conv_shortcut.bias',), _SAME),
    'NIN_0.W': (('conv_shortcut.weight',), 'nin_conv'), 'NIN_0.b': (('conv_shortcut.bias',), _SAME),
}
_ATTN = {'GroupNorm_0.weight': (('group_norm.weight',), _SAME),
         'GroupNorm_0.bias': (('group_norm.bias',), _SAME)}
for _i, (_new, _old) in enumerate((('to_q', 'query'), ('to_k', 'key'), ('to_v', 'value'),
                                   ('to_out.0', 'proj_attn'))):
    _ATTN[f'NIN_{_i}.W'] = ((f'{_new}.weight', f'{_old}.weight'), 'nin_linear')
    _ATTN[f'NIN_{_i}.b'] = ((f'{_new}.bias', f'{_old}.bias'), _SAME)
_KINDS = {
    'fourier': {'W': (('weight', 'W'), _SAME)},
    'plain': {'weight': (('weight',), _SAME), 'bias': (('bias',), _SAME)},
    'combine': {'Conv_0.weight': (('weight',), _SAME), 'Conv_0.bias': (('bias',), _SAME)},
    'resample': {'Conv_0.weight': (('conv.weight', 'op.weight'), _SAME),
                 'Conv_0.bias': (('conv.bias', 'op.bias'), _SAME)},
    'resnet': _RESNET,
    'attn': _ATTN,
}


def _layer_plan(family, levels, num_res_blocks, attn):
    """[(diffusers prefix, kind)] for each entry of the toolkit network's `all_modules`, in its
    construction order (networks/ncsnpp.py, networks/ddpm.py)."""
    plan = [('time_proj', 'fourier')] if family == 'ncsnpp' else []
    plan += [('time_embedding.linear_1', 'plain'), ('time_embedding.linear_2', 'plain'),
             ('conv_in', 'plain')]
    for i in range(levels):
        for j in range(num_res_blocks):
            plan.append((f'down_blocks.{i}.resnets.{j}', 'resnet'))
            if attn[i]:
                plan.append((f'down_blocks.{i}.attentions.{j}', 'attn'))
        if i != levels - 1:
            if family == 'ncsnpp':  # BigGAN down block, then the input pyramid's 1x1 combine
                plan += [(f'down_blocks.{i}.resnet_down', 'resnet'),
                         (f'down_blocks.{i}.skip_conv', 'combine')]
            else:
                plan.append((f'down_blocks.{i}.downsamplers.0', 'resample'))
    plan += [('mid_block.resnets.0', 'resnet'), ('mid_block.attentions.0', 'attn'),
             ('mid_block.resnets.1', 'resnet')]
    for i in reversed(range(levels)):
        u = levels - 1 - i
        for j in range(num_res_blocks + 1):
            plan.append((f'up_blocks.{u}.resnets.{j}', 'resnet'))
            if family == 'ddpm' and attn[i]:  # DDPM attends after every up block
                plan.append((f'up_blocks.{u}.attentions.{j}', 'attn'))
        if family == 'ncsnpp':
            if attn[i]:
                plan.append((f'up_blocks.{u}.attentions.0', 'attn'))
            # output pyramid: GroupNorm + 3x3 conv to the image channels at every level; at the
            # top level they are the network's final conv_norm_out / conv_out
            if i != 0:
                plan += [(f'up_blocks.{u}.skip_norm', 'plain'),
                         (f'up_blocks.{u}.skip_conv', 'plain'),
                         (f'up_blocks.{u}.resnet_up', 'resnet')]
            else:
                plan += [('conv_norm_out', 'plain'), ('conv_out', 'plain')]
        elif i != 0:
            plan.append((f'up_blocks.{u}.upsamplers.0', 'resample'))
    if family == 'ddpm':
        plan += [('conv_norm_out', 'plain'), ('conv_out', 'plain')]
    return plan


def weight_map(model, family, levels, num_res_blocks, attn):
    """[(toolkit key, diffusers names (current first), transform)] for every parameter of
    `model` (its `all_modules` in construction order). Buffers (sigmas, FIR kernels) are the
    network's own and are not mapped."""
    plan = _layer_plan(family, levels, num_res_blocks, attn)
    if len(plan) != len(model.all_modules):
        raise RuntimeError(f"internal: {len(plan)} diffusers layers planned for "
                           f"{len(model.all_modules)} toolkit layers")
    out = []
    for key, _ in model.named_parameters():
        m = re.match(r'all_modules\.(\d+)\.(.+)$', key)
        if m is None:
            raise RuntimeError(f"internal: parameter {key!r} outside all_modules")
        prefix, kind = plan[int(m.group(1))]
        try:
            names, transform = _KINDS[kind][m.group(2)]
        except KeyError:
            raise RuntimeError(f"internal: no diffusers name for {key!r} (a {kind} layer at "
                               f"{prefix})") from None
        out.append((key, tuple(f'{prefix}.{n}' for n in names), transform))
    return out


def _to_toolkit(t, transform):
    if transform == 'nin_conv':  # 1x1 conv [out, in, 1, 1] -> NIN W [in, out]
        if t.dim() != 4 or t.shape[2:] != (1, 1):
            return None
        return t[:, :, 0, 0].t().contiguous()
    if transform == 'nin_linear':  # Linear [out, in] (or a 1x1 conv) -> NIN W [in, out]
        if t.dim() == 4 and t.shape[2:] == (1, 1):
            t = t[:, :, 0, 0]
        return t.t().contiguous() if t.dim() == 2 else None
    return t


def _to_diffusers(t, transform):
    if transform == 'nin_conv':
        return t.t().contiguous()[:, :, None, None]
    if transform == 'nin_linear':
        return t.t().contiguous()
    return t.contiguous()


def map_state(model, state, entries, what):
    """(the toolkit state dict for `model` from diffusers `state`, notes on weights cast from
    another float precision); a DiffusersError names every missing, unknown, mis-shaped and
    non-float weight."""
    expected = model.state_dict()
    out = dict(expected)  # buffers stay the network's own
    missing, shapes, used, stored = [], [], set(), []
    for key, names, transform in entries:
        present = [n for n in names if n in state]
        if not present:
            missing.append(names[0])
            continue
        used.update(present)
        t = _to_toolkit(state[present[0]], transform)
        if t is None or t.shape != expected[key].shape:
            got = tuple(state[present[0]].shape)
            shapes.append(f"{present[0]} {got} (toolkit {key} needs "
                          f"{tuple(expected[key].shape)}{' transposed' if transform else ''})")
            continue
        for other in present[1:]:
            if not torch.equal(state[other], state[present[0]]):
                shapes.append(f"{other} differs from {present[0]}")
        out[key] = t
        stored.append((present[0], t, expected[key].dtype))
    unknown = [k for k in state if k not in used]
    problems = [f"{kind} weights: {_listed(names)}" for kind, names in
                (('missing', missing), ('unknown', unknown), ('mis-shaped', shapes)) if names]
    if problems:
        raise DiffusersError(f"{what} does not fit the {type(model).__name__} derived from its "
                             f"config: " + '; '.join(problems))
    try:
        notes = dtype_check(stored, what)
    except CheckpointError as e:
        raise DiffusersError(str(e)) from None
    return out, notes
