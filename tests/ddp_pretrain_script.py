"""Run by tests/test_pretrain_trainer.py, alone or under ``torchrun --nproc_per_node=2``:

    python ddp_pretrain_script.py METHOD OUT_DIR

METHOD ``deterministic``/``contrastive``: loss without random views on a BatchNorm-free ViT: 2 ranks with
the global batch split in two must end with the single-process weights. METHOD ``simclr``: random views and
the NT-Xent negatives gathered across ranks; checks that every rank ends with the same parameters. METHOD
``precise-bn``: the deterministic loss on a BatchNorm ConvNet with ``precise_bn_images``; the checksum
includes the batch-norm running statistics, which the ranks recompute identically after the last step.
Rank 0 writes ``OUT_DIR/params.json`` (each rank's parameter checksum) next to the trainer's files.
"""

import json
import sys

import torch

import robustssl as rs
from robustssl.pretrain import METHODS, PretrainMethod, TrainConfig, nt_xent, train
from robustssl.runtime import distributed, seeded_init


@METHODS.register("test-deterministic")
class Deterministic(PretrainMethod):
    """Pull each image's embedding towards a fixed random code of its pixels: a per-sample, view-free loss."""

    def __init__(self, encoder):
        super().__init__(encoder)
        self.head = torch.nn.Linear(encoder.embed_dim, 8)

    def training_loss(self, batch, generator):
        x = batch["image"]
        code = x.flatten(1)[:, :8] * 2 - 1
        loss = ((self.head(self.encoder.embed(x)) - code) ** 2).mean()
        return loss, {}


@METHODS.register("test-contrastive")
class Contrastive(PretrainMethod):
    """NT-Xent between an image and its mirror image: no random views, no BatchNorm, negatives gathered
    across ranks, so 2 ranks must match 1 process exactly (this checks the gather's gradient)."""

    def training_loss(self, batch, generator):
        x = batch["image"]
        loss = nt_xent(self.encoder.embed(x), self.encoder.embed(x.flip(-1)), 0.5)
        return loss, {}


def main(method_name: str, out: str) -> None:
    data = rs.data.load("scenes", split="train", size=32, n=64)
    with seeded_init(0):
        encoder = rs.encoders.create(
            "vit_tiny", img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2
        )
        if method_name == "precise-bn":
            encoder = rs.encoders.create("convnet_small", widths=(8, 8, 8, 8))
            method = METHODS.create("test-deterministic", encoder=encoder)
        elif method_name == "simclr":
            method = METHODS.create("simclr", encoder=encoder, proj_hidden_dim=16, proj_dim=8, views="tiny")
        else:
            method = METHODS.create(f"test-{method_name}", encoder=encoder)
    config = TrainConfig(
        steps=6, batch_size=16, lr=0.05, device="cpu", seed=1, log_every=0, tensorboard=False,
        precise_bn_images=64 if method_name == "precise-bn" else 0,
    )
    train(method, data, config, out_dir=out, method_name=method_name)
    tensors = [*method.parameters(), *(method.buffers() if method_name == "precise-bn" else ())]
    checksum = float(sum(t.detach().double().sum() for t in tensors))
    sums = distributed.gather_objects(checksum)
    if distributed.is_main():
        (__import__("pathlib").Path(out) / "params.json").write_text(json.dumps(sums))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    distributed.shutdown()  # after main's frame (and the DDP wrapper in it) is gone
