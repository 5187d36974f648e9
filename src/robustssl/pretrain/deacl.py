"""DeACL (Zhang et al., ECCV 2022, "Decoupled Adversarial Contrastive Learning for Self-supervised Adversarial
Robustness"), stage 2: robust fine-tuning of a standard-pretrained encoder by distillation.

The student (the encoder being trained, initialized from the teacher) sees a weakly augmented view ``x``
(random crop of the 4-px zero-padded image + flip, as DeACL's ``image_weak``); the teacher is a frozen copy
of a standard-pretrained encoder. PGD (eval mode; L-inf 8/255, 5 steps of 2/255) finds ``x_adv`` whose
student embedding is as far (cosine) from the clean one as possible; the loss is

    (1 − cos(S(x), T(x))) + ω · (1 − cos(S(x_adv), S(x))),  ω = 2 (DeACL's ``trades_k`` for CIFAR-10),

the paper's ``−cos − ω cos`` shifted by the constant ``1 + ω`` so that 0 is perfect. Embeddings are the
encoders' ``embed`` outputs, without projector (DeACL's ``projector_ablation = remove``).

The teacher is kept outside the module tree: it is not in ``parameters()`` (the optimizer never sees it), not
in ``state_dict()`` (a resumed run rebuilds it from the same option) and not saved as the encoder.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from robustssl.encoders.base import Encoder
from robustssl.pretrain.acl import pgd_settings
from robustssl.pretrain.adversarial import eval_mode, maximize
from robustssl.pretrain.method import METHODS, PretrainMethod
from robustssl.pretrain.standard import default_cache_dir, standard_pretrained
from robustssl.pretrain.weak_views import PadCropFlip

ATTACK_ANCHORS = ("student", "teacher")


def distillation_loss(student_clean: torch.Tensor, student_adv: torch.Tensor, teacher: torch.Tensor,
                      weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, cos(S(x), T(x)), cos(S(x_adv), S(x)))``, the cosines averaged over the batch, for (B, D)
    embeddings: ``loss = (1 − cos_teacher) + weight · (1 − cos_adv)``."""
    cos_teacher = F.cosine_similarity(student_clean.float(), teacher.float(), dim=1).mean()
    cos_adv = F.cosine_similarity(student_adv.float(), student_clean.float(), dim=1).mean()
    return (1 - cos_teacher) + weight * (1 - cos_adv), cos_teacher, cos_adv


@METHODS.register("deacl")
class DeACL(PretrainMethod):
    """DeACL. Options:

    - ``teacher``: a checkpoint path (``robustssl.encoders.load``), an ``Encoder``, None (a copy of the
      encoder's own initial weights: build the encoder from a pretrained checkpoint), or the name of a
      pretraining method (e.g. ``"simclr"``) that ``setup`` trains on the training set for ``teacher_steps``
      steps (batch ``teacher_batch_size``, SGD lr ``teacher_lr``, the method's keyword ``teacher_options``)
      on the encoder's architecture, cached under
      ``cache_dir`` (None: ``$ROBUSTSSL_CACHE`` or ``~/.cache/robustssl``);
    - ``init_from_teacher``: copy the teacher's weights into the student (default True);
    - ``weight`` ω (2.0), ``eps``, ``steps``, ``step_size``, ``attack_anchor``
    (``"student"``: push ``S(x_adv)`` away from ``S(x)``, the term the loss then closes; ``"teacher"``: away
    from ``T(x)``, as DeACL's released code does), ``padding`` (of the weak view's random crop, 4 px)."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        teacher: str | os.PathLike | Encoder | None = None,
        init_from_teacher: bool = True,
        teacher_steps: int = 300,
        teacher_batch_size: int = 128,
        teacher_lr: float = 0.5,
        teacher_options: dict[str, Any] | None = None,
        cache_dir: str | os.PathLike | None = None,
        weight: float = 2.0,
        eps: float = 8 / 255,
        steps: int = 5,
        step_size: float = 2 / 255,
        attack_anchor: str = "student",
        padding: int = 4,
    ):
        super().__init__(encoder)
        self.threat = pgd_settings("deacl", eps, steps, step_size)
        self.steps, self.step_size = steps, float(step_size)
        if not weight >= 0:
            raise ValueError(f"deacl: weight (ω) must be >= 0 (the paper uses 2.0), got {weight}")
        if attack_anchor not in ATTACK_ANCHORS:
            raise ValueError(f"deacl: unknown attack_anchor {attack_anchor!r}; "
                             f"accepted: {', '.join(ATTACK_ANCHORS)}")
        self.weight, self.attack_anchor = float(weight), attack_anchor
        self.views = PadCropFlip(padding=padding)
        if teacher_steps < 1 or teacher_batch_size < 2 or not teacher_lr > 0:
            raise ValueError("deacl: teacher_steps must be >= 1, teacher_batch_size >= 2 and teacher_lr > 0, "
                             f"got {teacher_steps}, {teacher_batch_size}, {teacher_lr}")
        self.init_from_teacher = init_from_teacher
        self.teacher_recipe = {"steps": teacher_steps, "batch_size": teacher_batch_size, "lr": teacher_lr,
                               "options": dict(teacher_options or {})}
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        # A tuple hides the teacher from nn.Module's registration (parameters, state_dict, .to).
        self._frozen_teacher: tuple[Encoder | None] = (None,)
        self.teacher_source = teacher
        if not self._pretrained_in_setup:
            self._set_teacher(self._build_teacher(teacher), copy_into_student=teacher is not None)

    @property
    def _pretrained_in_setup(self) -> bool:
        source = self.teacher_source
        return isinstance(source, str) and source in METHODS and not Path(source).exists()

    def setup(self, dataset: Any, device: torch.device, generator: torch.Generator) -> None:
        """With ``teacher`` naming a pretraining method: train (or load from the cache) that teacher on
        ``dataset`` and, with ``init_from_teacher``, copy it into the student."""
        if self._pretrained_in_setup:
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
            teacher = standard_pretrained(self.encoder, str(self.teacher_source), dataset, device, seed=seed,
                                          cache_dir=self.cache_dir, who="deacl", **self.teacher_recipe)
            self._set_teacher(self._freeze(teacher), copy_into_student=True)

    def _set_teacher(self, frozen: Encoder, copy_into_student: bool) -> None:
        encoder = self.encoder
        if copy_into_student and self.init_from_teacher:
            try:
                encoder.load_state_dict(frozen.state_dict())
            except RuntimeError as exc:
                raise ValueError(
                    f"deacl: cannot initialize the student {encoder.name!r} from the teacher {frozen.name!r} "
                    f"(different architectures: {str(exc).splitlines()[0]}); build the student with the "
                    "teacher's architecture (robustssl.encoders.create(teacher.name, **teacher.config)) or "
                    "pass init_from_teacher=False"
                ) from exc
        if frozen.embed_dim != encoder.embed_dim:
            raise ValueError(f"deacl: teacher and student embeddings differ in size ({frozen.embed_dim} vs "
                             f"{encoder.embed_dim}); the cosine loss needs the same embed_dim")
        self._frozen_teacher = (frozen,)

    @staticmethod
    def _freeze(encoder: Encoder) -> Encoder:
        encoder.eval()
        for p in encoder.parameters():
            p.requires_grad_(False)
        return encoder

    def _build_teacher(self, teacher: str | os.PathLike | Encoder | None) -> Encoder:
        """A frozen (eval, ``requires_grad=False``) copy of the teacher: loaded from a path, copied from an
        ``Encoder``, or copied from the student's current (initial) weights when None."""
        if teacher is None:
            frozen = copy.deepcopy(self.encoder)
        elif isinstance(teacher, Encoder):
            frozen = copy.deepcopy(teacher)
        elif isinstance(teacher, (str, os.PathLike)):
            from robustssl.encoders.checkpoints import load

            path = Path(teacher).expanduser()
            if not path.exists() and not path.with_name(path.name + ".safetensors").exists():
                raise ValueError(f"deacl: teacher {str(teacher)!r} is neither a checkpoint file nor a "
                                 f"pretraining method; accepted: a path loadable by robustssl.encoders.load, "
                                 f"an Encoder, None, or one of {', '.join(METHODS.names())}")
            frozen = load(path)
        else:
            raise TypeError("deacl: teacher must be a checkpoint path, a pretraining-method name, an "
                            f"Encoder or None, got {type(teacher).__name__}")
        return self._freeze(frozen)

    @property
    def teacher(self) -> Encoder:
        """The frozen teacher (eval mode, no gradients)."""
        teacher = self._frozen_teacher[0]
        if teacher is None:
            raise RuntimeError(f"deacl: the teacher ({self.teacher_source!r}) is pretrained by "
                               "setup(dataset, device, generator); call it before training "
                               "(robustssl.pretrain.train does)")
        return teacher

    def teacher_embed(self, x: torch.Tensor) -> torch.Tensor:
        """``T(x)`` (B, D) without gradients, the teacher moved to ``x``'s device first."""
        teacher = self.teacher
        if next(teacher.parameters()).device != x.device:
            teacher.to(x.device)
        with torch.no_grad():
            return teacher.embed(x)

    def training_loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x = self.views(batch["image"], generator=generator)
        target = self.teacher_embed(x)
        if self.attack_anchor == "teacher":
            anchor = target
        else:
            with eval_mode(self.encoder), torch.no_grad():
                anchor = self.encoder.embed(x)

        def away(x_adv: torch.Tensor) -> torch.Tensor:
            return -F.cosine_similarity(self.encoder.embed(x_adv).float(), anchor.float(), dim=1).sum()

        with eval_mode(self.encoder):
            x_adv = maximize(away, x, threat=self.threat, steps=self.steps, step_size=self.step_size,
                             generator=generator)
        student = self.encoder.embed(torch.cat([x, x_adv]))
        loss, cos_teacher, cos_adv = distillation_loss(student[: len(x)], student[len(x):], target,
                                                       self.weight)
        return loss, {"cos_teacher": float(cos_teacher.detach()), "cos_adv": float(cos_adv.detach())}
