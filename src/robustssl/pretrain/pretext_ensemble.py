"""``pretext-ensemble``: rotation, jigsaw and selfie on one shared encoder, with the gradient-diversity
regularizer of Chen et al. (CVPR 2020, "Adversarial Robustness: From Self-Supervised Pre-Training to
Fine-Tuning", Sec. 3.3).

Loss = mean of the three task cross-entropies − ``diversity_weight`` · mean over the batch of
``log det(G + diversity_eps · I)``, ``G`` the 3 x 3 Gram matrix of the tasks' L2-normalized loss gradients
with respect to the input image (``pretext.gradient_diversity``): rewarding the log-determinant pushes the
tasks to be vulnerable along different directions. All three gradients are taken with respect to the same
image (the rotation and the tiling happen inside each task), and the term is differentiated through (double
backpropagation), so it trains the encoder and the heads.

With ``adversarial`` one PGD example attacks the *sum* of the three task losses (on the whole image; each task
keeps its own random choices for the step), the task term becomes ``½ (mean clean CE + mean adversarial CE)``
and the gradients of the regularizer are taken at the adversarial image, as in the authors' code.

Defaults: ``diversity_weight`` 0.1 and ``diversity_eps`` 1e-5 are the values of the authors' released training
script (Adv-SS-Pretraining, ``pretraining/ensemble_pretrain.py``; the paper text does not state λ). That
script *adds* 0.1 · log det to the loss; we follow the paper's stated intent (diverse gradients) and subtract
it.
"""

from __future__ import annotations

import torch
from torch import nn

from robustssl.encoders.base import Encoder
from robustssl.pretrain.jigsaw import JigsawTask
from robustssl.pretrain.method import METHODS, PretrainMethod
from robustssl.pretrain.pretext import (
    PAPER_EPS,
    PAPER_STEP_SIZE,
    PAPER_STEPS,
    PretextTask,
    adversarial_threat,
    craft,
    embed_dim_of,
    gradient_diversity,
    resolve_augment,
)
from robustssl.pretrain.rotation import RotationTask
from robustssl.pretrain.selfie import SelfieTask

NAME = "pretext-ensemble"
#: λ and ε of the authors' released ensemble script (see the module docstring)
DIVERSITY_WEIGHT, DIVERSITY_EPS = 0.1, 1e-5


@METHODS.register(NAME)
class PretextEnsemble(PretrainMethod):
    """Rotation + jigsaw + selfie on one encoder with the gradient-diversity reward.

    Options: ``diversity_weight`` (λ >= 0; 0 drops the term and its double backpropagation), ``diversity_eps``
    (ε > 0); the tasks' ``rotation_hidden_dim``, ``jigsaw_grid``, ``num_permutations``, ``permutation_seed``,
    ``tile_crop``, ``selfie_grid``, ``num_masked``, ``selfie_dim``, ``selfie_layers`` (as the single-task
    methods' options); ``adversarial`` and its PGD ``eps``/``steps``/``step_size``.
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        diversity_weight: float = DIVERSITY_WEIGHT,
        diversity_eps: float = DIVERSITY_EPS,
        rotation_hidden_dim: int = 256,
        jigsaw_grid: int = 3,
        num_permutations: int = 30,
        permutation_seed: int = 0,
        tile_crop: float = 1.0,
        selfie_grid: int = 4,
        num_masked: int = 4,
        selfie_dim: int = 128,
        selfie_layers: int = 2,
        augment: str = "padcrop",
        adversarial: bool = False,
        eps: float = PAPER_EPS,
        steps: int = PAPER_STEPS,
        step_size: float = PAPER_STEP_SIZE,
    ):
        dim = embed_dim_of(encoder, NAME)
        super().__init__(encoder)
        if (
            isinstance(diversity_weight, bool)
            or not isinstance(diversity_weight, (int, float))
            or not diversity_weight >= 0
        ):
            raise ValueError(f"{NAME}: diversity_weight must be a number >= 0, got {diversity_weight!r}")
        if (
            isinstance(diversity_eps, bool)
            or not isinstance(diversity_eps, (int, float))
            or not diversity_eps > 0
        ):
            raise ValueError(f"{NAME}: diversity_eps must be > 0, got {diversity_eps!r}")
        if not isinstance(adversarial, bool):
            raise ValueError(f"{NAME}: adversarial must be true or false, got {adversarial!r}")
        self.diversity_weight, self.diversity_eps = float(diversity_weight), float(diversity_eps)
        self.adversarial = adversarial
        self.augment = resolve_augment(NAME, augment)
        self.threat = adversarial_threat(NAME, eps, steps, step_size)
        self.steps, self.step_size = steps, float(step_size)
        self.tasks = nn.ModuleDict(
            {
                "rotation": RotationTask(dim, rotation_hidden_dim),
                "jigsaw": JigsawTask(dim, jigsaw_grid, num_permutations, permutation_seed, tile_crop),
                "selfie": SelfieTask(dim, selfie_grid, num_masked, selfie_dim, selfie_layers),
            }
        )

    def _task_losses(
        self,
        x: torch.Tensor,
        draws: dict[str, dict[str, torch.Tensor]],
        with_diversity: bool,
        logs: dict[str, float],
        tag: str,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean task CE on ``x`` and, with ``with_diversity``, the batch-mean log det of the tasks' gradients
        (differentiable). Fills ``logs`` with each task's CE and accuracy, keys suffixed by ``tag``."""
        if with_diversity:
            x = x.detach().requires_grad_(True)
        losses, grads = [], []
        for name, task in self.tasks.items():
            task: PretextTask
            ce, acc = task.loss(self.encoder, x, draws[name])
            logs[f"{name}{tag}_ce"], logs[f"{name}{tag}_acc"] = float(ce.detach()), float(acc)
            losses.append(ce)
            if with_diversity:
                grads.append(torch.autograd.grad(ce, x, create_graph=True)[0])
        diversity = gradient_diversity(grads, self.diversity_eps).mean() if with_diversity else None
        return torch.stack(losses).mean(), diversity

    def training_loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["image"]
        for task in self.tasks.values():
            task.check_input(x)
        if self.augment is not None:
            x = self.augment(x, generator)
        draws = {name: task.draw(x, generator) for name, task in self.tasks.items()}
        regularize = self.diversity_weight > 0
        logs: dict[str, float] = {}
        if not self.adversarial:
            loss, diversity = self._task_losses(x, draws, regularize, logs, "")
        else:

            def summed(z: torch.Tensor) -> torch.Tensor:
                return sum(task.loss(self.encoder, z, draws[name])[0] for name, task in self.tasks.items())

            x_adv = craft(self, summed, x, self.threat, self.steps, self.step_size, generator)
            clean, _ = self._task_losses(x, draws, False, logs, "")
            adv, diversity = self._task_losses(x_adv, draws, regularize, logs, "_adv")
            loss = 0.5 * (clean + adv)
        logs["task_ce"] = float(loss.detach())
        if diversity is not None:
            logs["log_det"] = float(diversity.detach())
            loss = loss - self.diversity_weight * diversity
        return loss, logs
