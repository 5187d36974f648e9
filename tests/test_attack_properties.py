"""Invariants of EVERY registered attack x applicable objective (hypothesis: eps, norm, seed, batch, mode):

- ``‖x_adv − x‖ <= eps (+1e-6)`` in the threat's norm and ``x_adv`` in [0, 1], shape and dtype kept;
- eps = 0 returns the clean images;
- the model's train/eval mode (every submodule) and its parameters are unchanged, no ``.grad`` is left
  behind, and in eval mode its buffers are unchanged too (in train mode BatchNorm statistics move with any
  forward pass, attack or not);
- the same generator seed gives the same ``x_adv``.

Budgets are tiny (2 steps, 4 queries): these are contract tests, not strength tests. New attacks are covered
automatically through ``ATTACKS.names()``; an attack that needs constructor arguments the table below does not
know fails here with a message saying what to add.
"""

import inspect

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from robustssl.threats import ATTACKS, OBJECTIVES, MultiTaskObjective, ThreatModel

CLASSES = 5
# Constructor arguments that keep every attack tiny; only those an attack accepts are passed.
TINY = {"steps": 2, "n_queries": 4, "restarts": 1, "n_target_classes": 2, "eot_samples": 2, "samples": 2}
CLASSIFICATION_OBJECTIVES = ("ce", "cw", "dlr")
EPS = {"linf": (0.0, 0.2), "l2": (0.0, 1.5), "l1": (0.0, 6.0)}


def _quantize(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x * 8) / 8


class Net(nn.Module):
    """A tiny conv net with BatchNorm and Dropout whose output is of the objective's kind."""

    def __init__(self, kind: str, seed: int = 0):
        super().__init__()
        self.kind = kind
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.1)
        )
        self.cls = nn.Linear(6, CLASSES)
        self.seg = nn.Conv2d(6, 3, 1)
        self.depth = nn.Conv2d(6, 1, 1)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        f = self.trunk(x)
        outputs = {
            "logits": self.cls(f.mean(dim=(2, 3))),
            "segmentation": self.seg(f),
            "depth": nn.functional.softplus(self.depth(f)) + 0.1,
            "embedding": f.mean(dim=(2, 3)),
        }
        if self.kind == "dict":
            return {"cls": outputs["logits"], "seg": outputs["segmentation"], "emb": outputs["embedding"]}
        return outputs[self.kind]


def _objective(name: str):
    if name == "multitask":
        return MultiTaskObjective({"cls": ("ce", 1.0), "seg": ("seg-ce", 1.0), "emb": ("embed-l2", 1.0)})
    return OBJECTIVES.create(name)


def _target(name: str, kind: str, b: int, size: int, g: torch.Generator):
    y = torch.randint(0, CLASSES, (b,), generator=g)
    mask = torch.randint(0, 3, (b, size, size), generator=g)
    mask[:, 0] = 255
    if name == "dlr-targeted":
        return y, (y + 1) % CLASSES
    if kind == "logits":
        return y
    if kind == "segmentation":
        return mask
    if kind == "depth":
        depth = torch.rand(b, size, size, generator=g) * 3 + 0.5
        depth[:, :, 0] = 0
        return depth
    if kind == "dict":
        return {"cls": y, "seg": mask}
    return None


def _is_classification_only(name: str) -> bool:
    meta = ATTACKS.meta(name)
    return meta.get("task") == "classification" or meta.get("kind") == "minimum-norm"


def _attack_kwargs(name: str, kind: str) -> dict:
    factory = ATTACKS.get(name)
    params = inspect.signature(factory).parameters
    if (
        any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        and ATTACKS.meta(name).get("kind") != "wrapper"
    ):
        # a factory forwarding **kwargs: read the parameters of the class it builds
        params = {**params, **inspect.signature(type(factory()).__init__).parameters}
    kwargs = {k: v for k, v in TINY.items() if k in params}
    if ATTACKS.meta(name).get("kind") == "wrapper":
        # wrappers pass unknown keywords to their inner attack (PGD): keep it tiny too
        kwargs["steps"] = 2
        extra = {
            "bpda": {"preprocess": _quantize},
            "transfer": {"surrogate": Net(kind, seed=7).eval()},
            "eot": {},
        }
        if name not in extra:
            pytest.fail(
                f"wrapper attack {name!r}: add its required constructor arguments to this test's table"
            )
        kwargs.update(extra[name])
    return kwargs


CASES = [
    (a, o)
    for a in ATTACKS.names()
    for o in (CLASSIFICATION_OBJECTIVES if _is_classification_only(a) else OBJECTIVES.names())
]


@pytest.mark.parametrize("attack_name, objective_name", CASES)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_attack_contract(attack_name, objective_name, data):
    kind = "dict" if objective_name == "multitask" else OBJECTIVES.meta(objective_name)["output"]
    factory_norms = ATTACKS.create(attack_name, **_attack_kwargs(attack_name, kind)).norms
    norm = data.draw(st.sampled_from(sorted(set(factory_norms) & set(EPS))), label="norm")
    eps = data.draw(st.one_of(st.just(0.0), st.floats(*EPS[norm])), label="eps")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    b = data.draw(st.integers(1, 3), label="batch")
    training = data.draw(st.booleans(), label="train mode")
    size = 8

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, size, size, generator=g)
    target = _target(objective_name, kind, b, size, g)
    model = Net(kind, seed=seed % 5).train(training)
    params_before = {k: v.clone() for k, v in model.named_parameters()}
    buffers_before = {k: v.clone() for k, v in model.named_buffers()}
    modes_before = [m.training for m in model.modules()]
    attack = ATTACKS.create(attack_name, **_attack_kwargs(attack_name, kind))
    threat = ThreatModel(norm, eps)

    x_adv = attack(model, x, target, _objective(objective_name), threat, torch.Generator().manual_seed(seed))

    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(threat.distance(x_adv, x).max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    if eps == 0.0:
        assert torch.allclose(x_adv, x, atol=1e-7)
    assert [m.training for m in model.modules()] == modes_before
    for k, v in model.named_parameters():
        assert torch.equal(v, params_before[k]), f"{attack_name} changed parameter {k}"
        assert v.grad is None, f"{attack_name} left a gradient on {k}"
    if not training:
        for k, v in model.named_buffers():
            assert torch.equal(v, buffers_before[k]), f"{attack_name} changed buffer {k} in eval mode"
        again = ATTACKS.create(attack_name, **_attack_kwargs(attack_name, kind))
        x_again = again(
            model, x, target, _objective(objective_name), threat, torch.Generator().manual_seed(seed)
        )
        assert torch.equal(x_adv, x_again), f"{attack_name} is not reproducible from its generator"
