"""Batch-norm folding for the attack's passes (robustssl.threats.fusion): the folded view computes the same
function and input gradient, leaves the model untouched, and is refused where folding would be wrong."""

import pytest
import torch
from torch import fx, nn

import robustssl as rs
from robustssl.encoders.batchnorm import bn_branch
from robustssl.heads.build import build
from robustssl.runtime import seeded_init
from robustssl.threats import attack
from robustssl.threats.fusion import fold_batch_norm


def _batch_norms(module):
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _randomize_statistics(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    for bn in _batch_norms(module):
        n = bn.num_features
        bn.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
        bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        bn.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
        bn.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return module


def _snapshot(module):
    return (
        {k: v.detach().clone() for k, v in module.state_dict().items()},
        {name: (id(m), m.training) for name, m in module.named_modules()},
    )


def _value_and_input_gradient(model, x):
    x = x.clone().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out.float().square().sum(), x)
    return out.detach(), grad


def test_a_conv_bn_pair_folds_into_the_hand_computed_convolution():
    with seeded_init(0):
        model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.ReLU())
    _randomize_statistics(model).eval()
    folded = fold_batch_norm(model)
    assert isinstance(folded, fx.GraphModule) and _batch_norms(folded) == []
    conv = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert len(conv) == 1
    bn = model[1]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(conv[0].weight, model[0].weight * scale[:, None, None, None])
    torch.testing.assert_close(conv[0].bias, (model[0].bias - bn.running_mean) * scale + bn.bias)
    assert not any(p.requires_grad for p in conv[0].parameters())
    # on CPU the view's own weight is channels-last; the model's keeps its layout
    assert conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model[0].weight.is_contiguous()
    assert not model[0].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "encoder, options, task",
    [
        ("convnet_small", {}, "classification"),
        ("resnet18_cifar", {}, "classification"),
        ("resnet18_cifar", {"dual_bn": True}, "segmentation"),
    ],
)
def test_folded_task_models_match_and_the_model_is_untouched(encoder, options, task):
    with seeded_init(0):
        model = build(task, rs.encoders.create(encoder, **options), num_classes=5)
    _randomize_statistics(model).eval()
    before = _snapshot(model)
    folded = fold_batch_norm(model)
    assert folded is not model
    # the whole TaskModel traces (its checks are opaque calls); only a head's batch norm, which comes before
    # its 1x1 convolution rather than after one, stays
    heads_bn = len(_batch_norms(model.head)) if model.head is not None else 0
    assert isinstance(folded, fx.GraphModule) and len(_batch_norms(folded)) == heads_bn
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out, grad = _value_and_input_gradient(model, x)
    out_f, grad_f = _value_and_input_gradient(folded, x)
    torch.testing.assert_close(out_f, out, rtol=1e-4, atol=1e-5)
    # A ReLU input within rounding of 0 may switch sides and reroute part of the gradient: on this randomized
    # segmentation model, moving the input by 1e-6 changes the plain model's own gradient by 0.25% (norm) for
    # one of three draws. So: compare as vectors, and the signs (what an L-inf step uses) nearly all agree.
    assert (grad_f - grad).norm() <= 1e-2 * grad.norm()
    assert (grad_f.sign() == grad.sign()).float().mean() >= 0.999
    after = _snapshot(model)
    assert before[1] == after[1]  # same module objects in the same places, same modes
    assert all(torch.equal(v, after[0][k]) for k, v in before[0].items())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):  # the folded view still checks its input
        folded(x * 2)


def test_the_dual_batch_norm_branch_in_use_is_the_one_folded():
    with seeded_init(0):
        encoder = rs.encoders.create("convnet_small", widths=(8, 16, 16, 32), dual_bn=True)
    _randomize_statistics(encoder).eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with bn_branch(encoder, "adv"):
        folded = fold_batch_norm(encoder)
        expected = encoder(x)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(encoder(x), expected, atol=1e-3)  # the clean branch differs


def test_what_is_returned_unchanged():
    def conv_bn():
        with seeded_init(0):
            return _randomize_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))

    training = conv_bn().train()
    assert fold_batch_norm(training) is training  # batch statistics: the output depends on the batch
    hooked = conv_bn().eval()
    hooked[0].register_forward_hook(lambda *args: None)
    assert fold_batch_norm(hooked) is hooked
    function = conv_bn().eval().forward
    assert fold_batch_norm(function) is function
    no_bn = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    assert fold_batch_norm(no_bn) is no_bn

    class Randomized(nn.Sequential):
        def forward(self, x, generator=None):
            return super().forward(x)

    randomized = Randomized(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    assert fold_batch_norm(randomized) is randomized

    class Counting(nn.Module):  # a user's wrapper: tracing would freeze its counter, so it is not traced
        def __init__(self):
            super().__init__()
            self.inner, self.calls = conv_bn().eval(), 0

        def forward(self, x):
            self.calls += 1
            return self.inner(x)

    counting = Counting()
    assert fold_batch_norm(counting) is counting and counting.calls == 0

    class Shared(nn.Module):  # the convolution's output also skips the batch norm: not foldable
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    shared = _randomize_statistics(Shared()).eval()
    assert fold_batch_norm(shared) is shared


def test_the_api_folds_for_the_attack_and_judges_on_the_model():
    with seeded_init(0):
        encoder = rs.encoders.create("convnet_small", widths=(8, 16, 16, 32))
        model = build("classification", encoder, num_classes=6)
    _randomize_statistics(model).eval()
    x = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x).argmax(1)
    before = _snapshot(model)
    results = {
        fold: attack(model, x, y, "apgd", eps=[8 / 255, 12 / 255], steps=5, fold_bn=fold)
        for fold in (True, False)
    }
    for a, b in zip(results[True], results[False], strict=True):
        assert torch.equal(a.success, b.success)
        torch.testing.assert_close(a.x_adv, b.x_adv, rtol=0, atol=1e-4)
        with torch.no_grad():  # the verdict is the given model's
            assert torch.equal(a.success, model(a.x_adv).argmax(1) != y)
    assert 0 < results[True][1].success.sum() < 24  # some points fall, some hold
    after = _snapshot(model)
    assert before[1] == after[1] and all(torch.equal(v, after[0][k]) for k, v in before[0].items())
