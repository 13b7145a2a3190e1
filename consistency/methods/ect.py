"""ECT (Geng et al. 2024, "Consistency Models Made Easy"): continuous-time consistency training, from scratch."""

from __future__ import annotations

import torch
from torch import nn

from ..schedule import RHO, SIGMA_DATA, SIGMA_MAX, SIGMA_MIN
from .base import ConsistencyMethod, Distance, MethodOutput, check_range, consistency_pair


class EasyConsistencyTraining(ConsistencyMethod):
    """ECT's curriculum: t ~ lognormal, r = t (1 - q^-(stage+1) (1 + k sigmoid(-b t))), weight 1/(t - r).

    Early stages put r at the boundary for small t, where the target is the data itself (a denoising objective that
    learns fast); each stage halves t - r, tightening towards consistency. theta- = stopgrad(theta).
    The paper starts from a pretrained EDM teacher; started from scratch it is a fast-converging CT curriculum.
    """

    name = "ect"
    curriculum = "stage"

    def __init__(
        self,
        *,
        stages: int = 6,  # stage length = total_steps / stages (ECT doubles every fixed number of iterations)
        q: float = 2.0,  # ECT
        k: float = 8.0,  # ECT
        b: float = 1.0,  # ECT
        p_mean: float = -1.1,  # ECT / iCT
        p_std: float = 2.0,  # ECT / iCT
        distance: str | Distance = "pseudo_huber",
        sigma_min: float = SIGMA_MIN,
        sigma_max: float = SIGMA_MAX,
        rho: float = RHO,
        sigma_data: float = SIGMA_DATA,
    ):
        super().__init__(sigma_min, sigma_max, rho, distance, sigma_data)
        check_range(self.name, stages=(stages, stages >= 1, ">= 1"), q=(q, q > 1, "> 1"), k=(k, k >= 0, ">= 0"),
                    p_std=(p_std, p_std > 0, "> 0"))
        self.stages, self.q, self.k, self.b, self.p_mean, self.p_std = stages, q, k, b, p_mean, p_std

    def stage(self, step: int, total_steps: int) -> int:
        """The curriculum stage at step k: 0 .. stages - 1, equal lengths."""
        return min(step * self.stages // max(total_steps, 1), self.stages - 1)

    def r_of_t(self, t: torch.Tensor, stage: int) -> torch.Tensor:
        """ECT's mapping r(t) at a stage, clamped to [sigma_min, t): at sigma_min the target is the data + eps z."""
        decay = self.q ** -(stage + 1)
        r = t * (1 - decay * (1 + self.k * torch.sigmoid(-self.b * t)))
        return r.clamp(min=self.sigma_min)

    def __call__(self, model: nn.Module, target: nn.Module | None, x: torch.Tensor,
                 class_labels: torch.Tensor | None = None, *, step: int, total_steps: int) -> MethodOutput:
        stage = self.stage(step, total_steps)
        t = (torch.randn(x.shape[0], device=x.device) * self.p_std + self.p_mean).exp()
        t = t.clamp(2 * self.sigma_min, self.sigma_max)  # keeps t - r >= sigma_min > 0
        r = self.r_of_t(t, stage)
        z = torch.randn_like(x)
        b = (-1, 1, 1, 1)
        online, target_out = consistency_pair(model, target, x + t.view(b) * z, t, x + r.view(b) * z, r, class_labels)
        loss = self.distance(online.float(), target_out.float()) / (t - r)  # ECT: weight 1 / (t - r)
        return MethodOutput(loss, {"stage": stage})
