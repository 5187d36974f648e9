"""Watching representation quality during pretraining, as solo-learn does: an online linear probe and a
weighted k-NN classifier, both on labels the self-supervised loss never sees.

- **Online probe**: a linear layer on the encoder's embedding of each training batch's clean images, computed
  in eval mode without gradients (so the probe neither trains the encoder nor moves its batch-norm
  statistics), trained by its own SGD step each training step. Evaluated on a held-out split.
- **k-NN** (Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination"):
  cosine similarity of held-out embeddings to a bank of training embeddings; the top-k neighbours vote with
  weights ``exp(s / T)``; k = 20, T = 0.07 (solo-learn's defaults).

The monitor consumes no random numbers and never changes the method's parameters, buffers or mode, so a run
with it ends with exactly the weights of a run without it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustssl.data.base import VisionDataset
from robustssl.encoders.base import Encoder


def knn_predict(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Weighted k-NN class predictions (B,) for ``query`` (B, D) against ``bank`` (N, D), ``bank_labels``."""
    if query.dim() != 2 or bank.dim() != 2 or query.shape[1] != bank.shape[1]:
        raise ValueError(
            f"knn_predict expects (B, D) and (N, D), got {tuple(query.shape)} and {tuple(bank.shape)}"
        )
    if bank.shape[0] != bank_labels.shape[0]:
        raise ValueError("knn_predict: bank and bank_labels differ in length")
    k = min(k, bank.shape[0])
    bank = F.normalize(bank.float(), dim=1)
    out = []
    for start in range(0, query.shape[0], chunk):
        q = F.normalize(query[start : start + chunk].float(), dim=1)
        sims, idx = (q @ bank.t()).topk(k, dim=1)
        weights = (sims / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=q.device)
        votes.scatter_add_(1, bank_labels[idx], weights)
        out.append(votes.argmax(dim=1))
    return torch.cat(out)


@torch.no_grad()
def _embed_eval(encoder: Encoder, images: torch.Tensor) -> torch.Tensor:
    was_training = encoder.training
    encoder.eval()
    try:
        return encoder.embed(images).float()
    finally:
        encoder.train(was_training)


def _labelled(dataset: VisionDataset, role: str) -> None:
    if "label" not in getattr(dataset, "targets", ()):
        raise ValueError(
            f"the online probe / k-NN monitor needs class labels, but the {role} dataset "
            f"{dataset.name!r} has only {tuple(dataset.targets)}; turn the monitor off "
            "(--monitor-every 0) or use a labelled dataset"
        )


class Monitor(nn.Module):
    """``Monitor(encoder, train_ds, val_ds)``; ``update(batch)`` every step, ``evaluate()`` when wanted."""

    def __init__(
        self,
        encoder: Encoder,
        train_dataset: VisionDataset,
        val_dataset: VisionDataset,
        *,
        lr: float = 0.1,
        k: int = 20,
        temperature: float = 0.07,
        bank_size: int = 2000,
        batch_size: int = 256,
    ):
        super().__init__()
        _labelled(train_dataset, "training")
        _labelled(val_dataset, "held-out")
        self.num_classes = int(train_dataset.num_classes or 0)
        if self.num_classes < 2:
            raise ValueError(
                f"the monitor needs a dataset with >= 2 classes; {train_dataset.name!r} declares "
                f"{train_dataset.num_classes}"
            )
        self.encoder_ref = [encoder]  # not a submodule: the monitor must not own or save the encoder
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.probe = nn.Linear(encoder.embed_dim, self.num_classes)
        self.optimizer = torch.optim.SGD(self.probe.parameters(), lr=lr, momentum=0.9)
        self.k, self.temperature = k, temperature
        self.bank_size, self.batch_size = min(bank_size, len(train_dataset)), batch_size

    @property
    def encoder(self) -> Encoder:
        return self.encoder_ref[0]

    def update(self, batch: dict[str, torch.Tensor]) -> float:
        """One SGD step of the probe on the batch's clean images; returns its cross-entropy."""
        features = _embed_eval(self.encoder, batch["image"])
        with torch.enable_grad():
            loss = F.cross_entropy(self.probe(features), batch["label"].to(features.device))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def _features(self, dataset: VisionDataset, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.probe.parameters()).device
        indices = range(n if n is not None else len(dataset))
        feats, labels = [], []
        for batch in dataset.batches(self.batch_size, indices=indices):
            feats.append(_embed_eval(self.encoder, batch["image"].to(device)))
            labels.append(batch["label"].to(device))
        return torch.cat(feats), torch.cat(labels)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """``online_probe_top1`` and ``knn_top1`` on the held-out dataset."""
        bank, bank_labels = self._features(self.train_dataset, self.bank_size)
        feats, labels = self._features(self.val_dataset)
        probe_top1 = (self.probe(feats).argmax(1) == labels).float().mean().item()
        knn = knn_predict(feats, bank, bank_labels, self.num_classes, self.k, self.temperature)
        return {"online_probe_top1": probe_top1, "knn_top1": (knn == labels).float().mean().item()}

    def state(self) -> dict[str, Any]:
        return {"probe": self.probe.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load(self, state: dict[str, Any]) -> None:
        self.probe.load_state_dict(state["probe"])
        self.optimizer.load_state_dict(state["optimizer"])
