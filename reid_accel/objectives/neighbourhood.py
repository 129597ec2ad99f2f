"""Neighbourhood losses of a target batch against the exemplar memory.

Both losses pull a target image towards its own memory slot (instance term) and towards the slots that look most
like it (neighbour term). The camera-aware loss does this within the image's camera and, separately, across the
other cameras, so that camera style alone can never explain a neighbour; the camera-agnostic loss (the ablation)
uses one softmax over every slot.

The camera-aware loss runs on every training step over a (B_t, N) similarity matrix (N = 32,621 slots on MSMT17),
so its cost must stay small next to the similarity product itself. It therefore never builds a (B_t, N) camera mask:
per-camera maxima and sums are (B_t, C) tables reduced with `scatter_reduce` / `index_add`, the neighbour term is
evaluated only at the few neighbour positions, and the backward pass is written out (`grad = scale * (sparse - p * K)`
with K a (B_t, C) table: one gather and one in-place product) instead of replaying a dozen dense autograd nodes.
"""

import math

import torch
from torch import Tensor

MIN_PROB = 1e-5
"""Probabilities are clamped below at this value before the log in the camera-aware loss, as in the original."""

INTRA, INTER = 0, 1
"""Column of a (B, 2) per-row table: the row's own camera, and all the other cameras."""


def _check_inputs(sim: Tensor, slots: Tensor, *, scale: float, eps: float) -> None:
    if sim.dim() != 2 or slots.shape != sim.shape[:1]:
        raise ValueError(
            f"sim must be (B, N) and slots (B,), got sim {tuple(sim.shape)} and slots {tuple(slots.shape)}"
        )
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must lie in [0, 1], got {eps}")


class _NeighbourhoodNLL(torch.autograd.Function):
    """Negative log-likelihood of each row's instance slot and neighbours under group-restricted softmaxes.

    The slots of row i fall into two groups: those of its own camera (INTRA, self included) and those of the other
    cameras (INTER). Each group has its own softmax of `scale * sim`. Neighbours are non-self slots whose cosine
    exceeds `eps` times the best non-self cosine of their group (strict `>`). Log-probabilities are clamped below at
    `min_log_prob` (no clamp when it is -inf). Outputs are the INTRA loss (neighbour term + instance term) and the
    INTER loss (neighbour term); a row without neighbours in a group is left out of that group's mean.
    """

    @staticmethod
    def forward(ctx, sim, camids, memory_camids, slots, scale, eps, min_log_prob):
        batch = sim.shape[0]
        rows = torch.arange(batch, device=sim.device)
        non_self, best, own_camera, (nb_rows, nb_slots, nb_group, nb_sim) = _neighbours(
            sim, camids, memory_camids, slots, eps=eps
        )

        # Group softmaxes, shifted by each group's maximum: exp never overflows and each group sums to >= 1. The
        # exponentials go into the `non_self` buffer, no longer needed: the pass allocates one (B, N) float buffer,
        # which the backward then reuses for the gradient.
        self_sim = sim[rows, slots]  # (B,)
        shift = torch.stack([torch.maximum(best[:, INTRA], self_sim), best[:, INTER]], dim=1)  # (B, 2)
        shift = torch.where(torch.isfinite(shift), shift, 0.0)  # an empty group: any finite shift
        camera_shift = torch.where(own_camera, shift[:, INTRA, None], shift[:, INTER, None])  # (B, C)
        exp_logits = _exp_of_scaled(sim, -scale * camera_shift, memory_camids, scale=scale, out=non_self)  # (B, N)
        camera_sum = sim.new_zeros(own_camera.shape).index_add_(1, memory_camids, exp_logits)  # (B, C)
        group_sum = torch.stack(
            [camera_sum[rows, camids], camera_sum.masked_fill(own_camera, 0.0).sum(1)], dim=1
        )  # (B, 2)
        group_sum = torch.where(group_sum > 0, group_sum, 1.0)  # an empty group: no slot reads it
        log_norm = scale * shift + group_sum.log()  # (B, 2): log of each group's softmax denominator

        # Neighbour term, per (row, group): mean clamped log-probability over the row's neighbours in the group.
        nb_log_prob = scale * nb_sim - log_norm[nb_rows, nb_group]  # (K,)
        flat = nb_rows * 2 + nb_group  # (K,) index into a flattened (B, 2) table
        nb_sum = sim.new_zeros(batch * 2).index_add_(0, flat, nb_log_prob.clamp_min(min_log_prob)).view(batch, 2)
        nb_count = sim.new_zeros(batch * 2).index_add_(0, flat, torch.ones_like(nb_sim)).view(batch, 2)
        rows_with_nb = (nb_count > 0).sum(0).clamp_min(1)  # (2,)
        nb_term = -(nb_sum / nb_count.clamp_min(1)).sum(0) / rows_with_nb  # (2,)

        # Instance term: the row's own slot under the INTRA softmax.
        self_log_prob = scale * self_sim - log_norm[:, INTRA]  # (B,)
        instance_term = -self_log_prob.clamp_min(min_log_prob).mean()

        # For the backward: -d(nb_term[g]) / d(log-prob) of each neighbour, 0 where the clamp holds it (K,),
        # and its (row, group) totals (B, 2).
        nb_unit = (1.0 / (nb_count.clamp_min(1) * rows_with_nb)).view(-1)[flat] * (nb_log_prob > min_log_prob)
        unit_total = sim.new_zeros(batch * 2).index_add_(0, flat, nb_unit).view(batch, 2)
        self_active = self_log_prob > min_log_prob  # (B,)
        ctx.scale = scale
        ctx.save_for_backward(
            sim, camera_shift, group_sum, own_camera, memory_camids, slots, nb_rows, nb_slots, nb_group, nb_unit
        )
        ctx.unit_total, ctx.self_active = unit_total, self_active
        ctx.scratch = exp_logits  # storage for the gradient; its values are not read again
        return nb_term[INTRA] + instance_term, nb_term[INTER]

    @staticmethod
    def backward(ctx, grad_intra, grad_inter):
        saved = ctx.saved_tensors
        sim, camera_shift, group_sum, own_camera, memory_camids, slots, nb_rows, nb_slots, nb_group, nb_unit = saved
        batch, scale = sim.shape[0], ctx.scale
        rows = torch.arange(batch, device=sim.device)
        grad_group = torch.stack([grad_intra, grad_inter])  # (2,)

        # d loss / d log-prob of each unclamped term (the losses are negative mean log-probabilities).
        nb_coef = -nb_unit * grad_group[nb_group]  # (K,)
        self_coef = -(grad_intra / batch) * ctx.self_active  # (B,)
        coef_total = -ctx.unit_total * grad_group  # (B, 2)
        coef_total[:, INTRA] += self_coef

        # d log p_j / d logit_b = [j == b] - p_b over j's group, so each group adds its coefficient total times its
        # softmax: dense grad = p * weight, with weight a (B, C) table that also holds the scale (d logit / d sim).
        # p * |weight| = exp(scale * sim + log|weight| - scale * shift - log group_sum) is computed into the forward's
        # buffer (a second backward, after retain_graph, gets a new one).
        weight = coef_total * (-scale) / group_sum  # (B, 2)
        camera_weight = torch.where(own_camera, weight[:, INTRA, None], weight[:, INTER, None])  # (B, C)
        buffer = ctx.scratch if ctx.scratch is not None else torch.empty_like(sim)
        ctx.scratch = None
        offset = camera_weight.abs().log() - scale * camera_shift  # (B, C)
        grad_sim = _exp_of_scaled(sim, offset, memory_camids, scale=scale, out=buffer)  # (B, N)
        if (camera_weight < 0).any():  # only when an upstream gradient is negative
            grad_sim.mul_(camera_weight.sign().index_select(1, memory_camids))
        grad_sim.index_put_((nb_rows, nb_slots), nb_coef * scale, accumulate=True)
        grad_sim.index_put_((rows, slots), self_coef * scale, accumulate=True)
        return grad_sim, None, None, None, None, None, None


def _neighbours(
    sim: Tensor, camids: Tensor, memory_camids: Tensor, slots: Tensor, *, eps: float
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """The neighbour sets of each row, in both groups (INTRA: its own camera, INTER: the others).

    Returns:
        `non_self` (B, N), `sim` with each row's own slot at -inf (a buffer the caller may reuse); `best` (B, 2), the
        best non-self cosine per group; `own_camera` (B, C), each row's camera as a mask; and the neighbours as
        parallel (K,) tensors: row, slot, group and cosine.
    """
    batch, num_slots = sim.shape
    num_cameras = int(torch.maximum(memory_camids.max(), camids.max())) + 1
    rows = torch.arange(batch, device=sim.device)
    cam_index = memory_camids.expand(batch, num_slots)  # (B, N), a view: no copy
    own_camera = torch.arange(num_cameras, device=sim.device) == camids[:, None]  # (B, C)

    # Best non-self cosine per (row, camera), then per (row, group).
    non_self = sim.clone()
    non_self[rows, slots] = -math.inf
    camera_best = sim.new_full((batch, num_cameras), -math.inf)
    camera_best.scatter_reduce_(1, cam_index, non_self, "amax")  # (B, C)
    best = torch.stack(
        [camera_best[rows, camids], camera_best.masked_fill(own_camera, -math.inf).amax(1)], dim=1
    )  # (B, 2)

    # A group whose best cosine is <= 0 has no neighbour (no cosine can exceed eps * best <= best), so the dense pass
    # only compares against one threshold per row, and the exact group test runs on the few survivors.
    threshold = eps * best  # (B, 2)
    row_threshold = torch.where(best > 0, threshold, math.inf).amin(1, keepdim=True)  # (B, 1)
    nb_rows, nb_slots = (non_self > row_threshold).nonzero(as_tuple=True)  # (K,), (K,)
    nb_group = (memory_camids[nb_slots] != camids[nb_rows]).long()  # (K,) INTRA or INTER
    nb_sim = sim[nb_rows, nb_slots]
    keep = nb_sim > threshold[nb_rows, nb_group]
    return non_self, best, own_camera, (nb_rows[keep], nb_slots[keep], nb_group[keep], nb_sim[keep])


@torch.no_grad()
def neighbour_statistics(
    sim: Tensor, camids: Tensor, memory_camids: Tensor, slots: Tensor, memory_pids: Tensor, *, eps: float
) -> dict[str, Tensor]:
    """How right the camera-aware neighbour sets are, for a target whose identities are known.

    A diagnostic of training (the identities never enter a loss): whether the neighbours the losses pull towards
    are the same person, how many there are, and how many of a person's images they find, per group.

    Args:
        sim: (B_t, N) cosine similarities, as given to `camera_aware_neighbourhood_loss`.
        camids: (B_t,) camera of each row.
        memory_camids: (N,) camera of each slot.
        slots: (B_t,) memory slot of each row.
        memory_pids: (N,) true identity of each slot.
        eps: the neighbour ratio the loss uses.

    Returns:
        Scalars, for g in intra and inter: `{g}_precision`, the share of a row's neighbours that are its identity
        (mean over rows with neighbours); `{g}_recall`, the share of the row's other images of its identity in the
        group that are neighbours (mean over rows that have such images); `{g}_neighbours`, neighbours per row;
        `{g}_empty`, the share of rows without a neighbour.
    """
    sim = _as_float(sim)
    batch = sim.shape[0]
    rows = torch.arange(batch, device=sim.device)
    _, _, own_camera, (nb_rows, nb_slots, nb_group, _) = _neighbours(sim, camids, memory_camids, slots, eps=eps)
    row_pids = memory_pids[slots]  # (B,)
    flat = nb_rows * 2 + nb_group  # (K,) index into a flattened (B, 2) table
    right = (memory_pids[nb_slots] == row_pids[nb_rows]).float()  # (K,)
    count = sim.new_zeros(batch * 2).index_add_(0, flat, torch.ones_like(right)).view(batch, 2)
    correct = sim.new_zeros(batch * 2).index_add_(0, flat, right).view(batch, 2)
    same = (memory_pids == row_pids[:, None]).float()  # (B, N)
    same[rows, slots] = 0.0
    camera_same = sim.new_zeros(batch, own_camera.shape[1]).index_add_(1, memory_camids, same)  # (B, C)
    intra_same = camera_same[rows, camids]
    truth = torch.stack([intra_same, camera_same.sum(1) - intra_same], dim=1)  # (B, 2) other images of the row's pid

    def mean_where(values: Tensor, valid: Tensor) -> Tensor:  # (B, 2) -> (2,), over valid rows; 0 when none
        return (values * valid).sum(0) / valid.sum(0).clamp_min(1)

    has = (count > 0).float()
    stats = {
        "precision": mean_where(correct / count.clamp_min(1), has),
        "recall": mean_where(correct / truth.clamp_min(1), (truth > 0).float()),
        "neighbours": count.mean(0),
        "empty": 1.0 - has.mean(0),
    }
    return {
        f"{group}_{name}": values[index]
        for name, values in stats.items()
        for index, group in ((INTRA, "intra"), (INTER, "inter"))
    }


def _exp_of_scaled(sim: Tensor, camera_offset: Tensor, memory_camids: Tensor, *, scale: float, out: Tensor) -> Tensor:
    """`out[i, j] = exp(scale * sim[i, j] + camera_offset[i, memory_camids[j]])`: a gather, a fused add, an exp."""
    torch.index_select(camera_offset, 1, memory_camids, out=out)  # (B, N)
    return out.add_(sim, alpha=scale).exp_()


def _as_float(sim: Tensor) -> Tensor:
    """Similarities in float32 (float64 is kept, for gradient checks): the softmaxes span thousands of slots."""
    return sim if sim.dtype == torch.float64 else sim.float()


def camera_aware_neighbourhood_loss(
    sim: Tensor, camids: Tensor, memory_camids: Tensor, slots: Tensor, *, scale: float, eps: float
) -> tuple[Tensor, Tensor]:
    """Intra- and inter-camera neighbourhood losses (METHOD.md, "Camera-aware neighbourhood loss").

    For row i with camera c_i and memory slot k_i: intra-camera neighbours are the slots of camera c_i other than
    k_i whose cosine exceeds `eps` times the best such cosine; inter-camera neighbours likewise among the slots of the
    other cameras. `p_intra` / `p_inter` are softmaxes of `scale * sim` restricted to the row's own camera (k_i
    included) / to the other cameras, clamped below at 1e-5 before the log.

    Computed in float32 with autocast disabled, without any (B_t, N) camera mask; a row without neighbours is left
    out of that neighbour mean (all rows without: the term is 0), so no NaN can arise.

    Args:
        sim: (B_t, N) cosine similarities of L2-normalised target features to the memory rows (no grad into the
            memory).
        camids: (B_t,) camera of each target image (0-based).
        memory_camids: (N,) camera of each memory slot; `memory_camids[slots] == camids` (a slot holds its image's
            camera).
        slots: (B_t,) memory slot of each target image.
        scale: inverse softmax temperature (10 in the published configs).
        eps: neighbour ratio in [0, 1] (0.8 in the published configs).

    Returns:
        `(intra, inter)`, two scalars: the intra-camera neighbour term plus the instance term, and the
        inter-camera neighbour term.
    """
    _check_inputs(sim, slots, scale=scale, eps=eps)
    with torch.autocast(device_type=sim.device.type, enabled=False):
        return _NeighbourhoodNLL.apply(
            _as_float(sim),
            camids.long(),
            memory_camids.long(),
            slots.long(),
            float(scale),
            float(eps),
            math.log(MIN_PROB),
        )


def camera_agnostic_neighbourhood_loss(sim: Tensor, slots: Tensor, *, scale: float, eps: float) -> Tensor:
    """Neighbourhood loss with one softmax over all slots (METHOD.md, the `neighbour_mode: camera_agnostic` ablation).

    Neighbours of row i are the slots other than k_i whose cosine exceeds `eps` times the best such cosine. The loss
    is the mean negative log-probability of the neighbours (rows without any left out) plus that of k_i, under
    `log_softmax(scale * sim)` without clamping. It is the camera-aware INTRA loss with every slot in one camera.

    Args:
        sim: (B_t, N) cosine similarities of L2-normalised target features to the memory rows.
        slots: (B_t,) memory slot of each target image.
        scale: inverse softmax temperature.
        eps: neighbour ratio in [0, 1].

    Returns:
        The scalar loss.
    """
    _check_inputs(sim, slots, scale=scale, eps=eps)
    one_camera = slots.new_zeros(())
    with torch.autocast(device_type=sim.device.type, enabled=False):
        loss, _ = _NeighbourhoodNLL.apply(
            _as_float(sim),
            one_camera.expand(sim.shape[0]),
            one_camera.expand(sim.shape[1]),
            slots.long(),
            float(scale),
            float(eps),
            -math.inf,
        )
    return loss
