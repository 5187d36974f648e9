"""Objectives: hand-computed losses, success criteria, target validation, and every registered entry."""

import math

import pytest
import torch
import torch.nn.functional as F

from robustssl.registry import UnknownNameError
from robustssl.threats.objectives import (
    OBJECTIVES,
    LossWithSuccess,
    MultiTaskObjective,
    objective_for_task,
)


def _outputs(kind: str, b: int = 3, requires_grad: bool = False):
    """(output, target, reference) of the kind an objective's registry metadata names."""
    g = torch.Generator().manual_seed(0)
    if kind == "logits":
        out = torch.randn(b, 5, generator=g)
        return out.requires_grad_(requires_grad), torch.tensor([0, 3, 4])[:b], out.detach()
    if kind == "segmentation":
        out = torch.randn(b, 4, 6, 6, generator=g)
        mask = torch.randint(0, 4, (b, 6, 6), generator=g)
        mask[:, 0, :] = 255
        return out.requires_grad_(requires_grad), mask, out.detach()
    if kind == "depth":
        out = torch.rand(b, 1, 6, 6, generator=g) * 5 + 0.5
        depth = torch.rand(b, 6, 6, generator=g) * 5 + 0.5
        depth[:, :, 0] = 0
        return out.requires_grad_(requires_grad), depth, out.detach()
    if kind == "embedding":
        ref = torch.randn(b, 8, generator=g)
        out = ref + 0.1 * torch.randn(b, 8, generator=g)
        return out.requires_grad_(requires_grad), None, ref
    raise AssertionError(kind)


def _make(name: str):
    if name == "multitask":
        return MultiTaskObjective({"cls": ("ce", 1.0), "emb": ("embed-l2", 0.5)})
    return OBJECTIVES.create(name)


def _sample(name: str, requires_grad: bool = False):
    kind = OBJECTIVES.meta(name)["output"]
    if name == "multitask":
        c_out, c_t, c_ref = _outputs("logits", requires_grad=requires_grad)
        e_out, _, e_ref = _outputs("embedding", requires_grad=requires_grad)
        return {"cls": c_out, "emb": e_out}, {"cls": c_t}, {"cls": c_ref, "emb": e_ref}
    out, target, ref = _outputs(kind, requires_grad=requires_grad)
    if name == "dlr-targeted":
        target = (target, torch.tensor([1, 0, 2]))
    return out, target, ref


# --- every registered objective -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_every_objective_gives_finite_per_sample_loss_with_gradient(name):
    objective = _make(name)
    out, target, ref = _sample(name, requires_grad=True)
    objective.validate(out, target)
    loss = objective.loss(out, target, ref, 0.5)
    assert loss.shape == (3,) and torch.isfinite(loss).all()
    leaves = list(out.values()) if isinstance(out, dict) else [out]
    grads = torch.autograd.grad(loss.sum(), leaves)
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    success = objective.success(out, target, ref)
    assert success.dtype == torch.bool and success.shape == (3,)


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_every_objective_rejects_a_target_of_the_wrong_batch(name):
    objective = _make(name)
    out, target, _ = _sample(name)
    if target is None:  # embeddings take no target; a non-(B, D) output is what they reject
        with pytest.raises(ValueError, match="embeddings of shape"):
            objective.validate(torch.zeros(3), None)
        return
    bad = (
        {"cls": target["cls"][:2]}
        if isinstance(target, dict)
        else (target[0][:2], target[1][:2])
        if isinstance(target, tuple)
        else target[:2]
    )
    with pytest.raises(ValueError):
        objective.validate(out, bad)


def test_unknown_objective_lists_the_valid_names():
    with pytest.raises(UnknownNameError) as exc:
        OBJECTIVES.create("cee")
    assert "ce" in str(exc.value) and "embed-l2" in str(exc.value) and "segpgd" in str(exc.value)


# --- classification, hand-computed --------------------------------------------------------------------------
def test_cross_entropy_matches_log_softmax_and_targeted_is_its_negative():
    z = torch.tensor([[2.0, 0.0, -1.0]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1)))
    assert OBJECTIVES.create("ce").loss(z, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-6)
    targeted = OBJECTIVES.create("ce", targeted=True)
    assert targeted.loss(z, torch.tensor([0])).item() == pytest.approx(-expected, rel=1e-6)
    assert targeted.success(z, torch.tensor([0])).item() and not targeted.success(z, torch.tensor([1])).item()


def test_cw_margin_hand_values():
    z = torch.tensor([[1.0, 3.0, 2.0]])
    assert OBJECTIVES.create("cw").loss(z, torch.tensor([0])).item() == pytest.approx(2.0)  # 3 - 1
    assert OBJECTIVES.create("cw", targeted=True).loss(z, torch.tensor([2])).item() == pytest.approx(
        -1.0
    )  # 2 - 3
    assert OBJECTIVES.create("cw", confidence=0.5).loss(z, torch.tensor([0])).item() == pytest.approx(0.5)


def test_dlr_hand_value_and_invariance_to_shift_and_scale():
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    dlr = OBJECTIVES.create("dlr")
    # -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3) = -(3 - 2) / (3 - 1)
    assert dlr.loss(z, torch.tensor([0])).item() == pytest.approx(-0.5)
    assert dlr.loss(z * 7 + 3, torch.tensor([0])).item() == pytest.approx(-0.5, rel=1e-6)
    # misclassified: positive
    assert dlr.loss(z, torch.tensor([1])).item() == pytest.approx((3 - 1) / 2)


def test_dlr_targeted_hand_value():
    z = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    loss = OBJECTIVES.create("dlr-targeted").loss(z, (torch.tensor([0]), torch.tensor([1])))
    # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) = -(4 - 3) / (4 - 1.5)
    assert loss.item() == pytest.approx(-1 / 2.5)


def test_dlr_needs_three_classes_and_targeted_needs_four():
    with pytest.raises(ValueError, match="at least 3"):
        OBJECTIVES.create("dlr").validate(torch.zeros(2, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least 4"):
        OBJECTIVES.create("dlr-targeted").validate(
            torch.zeros(2, 3), (torch.tensor([0, 1]), torch.tensor([1, 2]))
        )
    with pytest.raises(ValueError, match="y_true, y_target"):
        OBJECTIVES.create("dlr-targeted").validate(torch.zeros(2, 5), torch.tensor([0, 1]))


def test_classification_validation_messages():
    ce = OBJECTIVES.create("ce")
    with pytest.raises(ValueError, match=r"\[0, 2\].*\[0, 3\]"):
        ce.validate(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="dtype"):
        ce.validate(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        ce.validate(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]))


def test_classification_success_is_misclassification():
    z = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
    assert OBJECTIVES.create("ce").success(z, torch.tensor([0, 0])).tolist() == [False, True]


# --- embeddings ---------------------------------------------------------------------------------------------
def test_embedding_losses_hand_values_and_zero_at_clean():
    ref, out = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert OBJECTIVES.create("embed-mse").loss(out, None, ref).item() == pytest.approx(1.0)
    assert OBJECTIVES.create("embed-cos").loss(out, None, ref).item() == pytest.approx(1.0)
    assert OBJECTIVES.create("embed-l2").loss(out, None, ref).item() == pytest.approx(math.sqrt(2), rel=1e-6)
    for name in ("embed-mse", "embed-cos", "embed-l2"):
        assert OBJECTIVES.create(name).loss(ref, None, ref).item() == pytest.approx(0.0, abs=1e-6)


def test_embedding_success_only_with_a_threshold():
    ref, out = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.1]])
    plain = OBJECTIVES.create("embed-l2")
    assert not plain.has_success and not plain.success(out, None, ref).any()
    thresholded = OBJECTIVES.create("embed-l2", threshold=0.5)
    assert thresholded.has_success and thresholded.success(out, None, ref).tolist() == [True, False]
    with pytest.raises(ValueError, match="reference"):
        plain.loss(out, None, None)


# --- segmentation -------------------------------------------------------------------------------------------
def test_seg_ce_is_the_mean_over_non_ignored_pixels():
    logits = torch.tensor([[[[2.0, 0.0, 1.0]], [[0.0, 3.0, 1.0]]]])  # (1, 2, 1, 3)
    mask = torch.tensor([[[0, 255, 1]]])
    ce0 = -F.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]
    ce2 = -F.log_softmax(torch.tensor([1.0, 1.0]), 0)[1]
    loss = OBJECTIVES.create("seg-ce").loss(logits, mask)
    assert loss.item() == pytest.approx(float(ce0 + ce2) / 2, rel=1e-6)
    all_ignored = torch.full((1, 1, 3), 255)
    assert OBJECTIVES.create("seg-ce").loss(logits, all_ignored).item() == 0.0


def test_segpgd_weights_correct_then_wrong_pixels_over_progress():
    # pixel 0 correct (label 0, argmax 0), pixel 1 wrong (label 0, argmax 1)
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])
    mask = torch.tensor([[[0, 0]]])
    ce = F.cross_entropy(logits, mask, reduction="none")[0, 0]
    segpgd = OBJECTIVES.create("segpgd")
    # lambda = progress / 2:  ((1 - lambda) * ce_correct + lambda * ce_wrong) / N
    assert segpgd.loss(logits, mask, progress=0.0).item() == pytest.approx(float(ce[0]) / 2, rel=1e-6)
    assert segpgd.loss(logits, mask, progress=1.0).item() == pytest.approx(float(ce[0] + ce[1]) / 4, rel=1e-6)
    lam = 0.3
    expected = ((1 - lam) * ce[0] + lam * ce[1]) / 2
    assert segpgd.loss(logits, mask, progress=0.6).item() == pytest.approx(float(expected), rel=1e-6)
    with pytest.raises(ValueError, match="progress"):
        segpgd.loss(logits, mask, progress=1.5)


def test_segmentation_success_threshold_on_pixel_error_rate():
    logits = torch.tensor([[[[2.0, 0.0, 0.0]], [[0.0, 1.0, 1.0]]]])  # argmax 0, 1, 1
    mask = torch.tensor([[[0, 0, 255]]])  # 1 of 2 valid pixels wrong
    assert OBJECTIVES.create("seg-ce", threshold=0.5).success(logits, mask).item()
    assert not OBJECTIVES.create("seg-ce", threshold=0.6).success(logits, mask).item()
    with pytest.raises(ValueError, match="mask labels"):
        OBJECTIVES.create("seg-ce").validate(logits, torch.tensor([[[0, 2, 255]]]))


# --- depth --------------------------------------------------------------------------------------------------
def test_silog_of_a_global_scale_error_is_its_hand_value_and_ignores_invalid_pixels():
    gt = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(1)) * 4 + 1
    pred = (gt * 2.0)[:, None]
    objective = OBJECTIVES.create("depth-silog")
    # d = log 2 everywhere: mean(d^2) - 0.85 mean(d)^2 = 0.15 log(2)^2; gradient matching of a constant = 0
    expected = 0.15 * math.log(2) ** 2
    assert objective.loss(pred, gt).tolist() == pytest.approx([expected] * 2, rel=1e-5)
    gt_holes = gt.clone()
    gt_holes[:, :3] = 0
    pred_garbage = pred.clone()
    pred_garbage[:, :, :3] = 100.0
    assert objective.loss(pred_garbage, gt_holes).tolist() == pytest.approx([expected] * 2, rel=1e-5)


def test_gradient_matching_term_hand_value():
    gt = torch.ones(1, 1, 2)
    pred = torch.tensor([[[[1.0, math.e]]]])  # d = (0, 1): one horizontal pair with |dx d| = 1
    objective = OBJECTIVES.create("depth-silog", variance_focus=0.0, gradient_weight=1.0, scales=1)
    # silog (variance_focus 0) = mean(d^2) = 0.5; gradient matching = 1 / 1 pair
    assert objective.loss(pred, gt).item() == pytest.approx(0.5 + 1.0, rel=1e-6)


def test_depth_success_threshold_and_validation():
    gt = torch.full((1, 2, 2), 2.0)
    pred = torch.full((1, 1, 2, 2), 3.0)  # abs rel 0.5
    assert OBJECTIVES.create("depth-silog", threshold=0.5).success(pred, gt).item()
    assert not OBJECTIVES.create("depth-silog", threshold=0.6).success(pred, gt).item()
    with pytest.raises(ValueError, match="NaN"):
        OBJECTIVES.create("depth-silog").validate(pred, torch.full((1, 2, 2), float("nan")))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        OBJECTIVES.create("depth-silog").validate(torch.zeros(1, 2, 2, 2), gt)


# --- multi-task ---------------------------------------------------------------------------------------------
def test_multitask_normalizes_each_task_by_its_clean_value():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.2, 0.1]])
    y = torch.tensor([0, 1])
    emb_ref = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    emb_out = emb_ref + torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    objective = MultiTaskObjective({"cls": ("ce", 2.0), "emb": ("embed-l2", 1.0)})
    ref = {"cls": logits, "emb": emb_ref}
    # at the clean outputs: 2 * ce/ce + 1 * 0 / |emb|
    assert objective.loss(ref, {"cls": y}, ref).tolist() == pytest.approx([2.0, 2.0], rel=1e-5)
    # embedding distance 1, divided by the clean norm (5 and 2)
    out = {"cls": logits, "emb": emb_out}
    assert objective.loss(out, {"cls": y}, ref).tolist() == pytest.approx(
        [2.0 + 1 / 5, 2.0 + 1 / 2], rel=1e-5
    )
    assert set(objective.task_losses(out, {"cls": y}, ref)) == {"cls", "emb"}


def test_multitask_success_needs_every_task_to_have_one():
    assert not MultiTaskObjective({"a": ("ce", 1.0), "b": ("embed-l2", 1.0)}).has_success
    both = MultiTaskObjective({"a": ("ce", 1.0), "b": (OBJECTIVES.create("embed-l2", threshold=0.1), 1.0)})
    assert both.has_success


def test_multitask_rejects_bad_specs_and_outputs():
    with pytest.raises(ValueError, match="non-empty"):
        MultiTaskObjective({})
    with pytest.raises(ValueError, match="weight"):
        MultiTaskObjective({"a": ("ce", -1.0)})
    with pytest.raises(ValueError, match="dict of outputs"):
        MultiTaskObjective({"a": ("ce", 1.0)}).validate(torch.zeros(2, 3), {"a": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match="'a'"):
        MultiTaskObjective({"a": ("ce", 1.0)}).validate({"b": torch.zeros(2, 3)}, {"a": torch.tensor([0, 1])})


def test_loss_with_success_ascends_one_loss_and_judges_by_another():
    z = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    combo = LossWithSuccess(OBJECTIVES.create("dlr-targeted"), OBJECTIVES.create("ce"), targeted_loss=True)
    target = (torch.tensor([0]), torch.tensor([2]))
    assert combo.loss(z, target).item() == pytest.approx(
        OBJECTIVES.create("dlr-targeted").loss(z, target).item()
    )
    assert not combo.success(z, target).item()  # still classified 0
    assert combo.tracking_loss(z, target).item() == pytest.approx(
        F.cross_entropy(z, torch.tensor([0])).item()
    )


@pytest.mark.parametrize(
    "task, name",
    [
        ("classification", "ce"),
        ("segmentation", "seg-ce"),
        ("depth", "depth-silog"),
        ("embedding", "embed-l2"),
    ],
)
def test_default_objective_per_task(task, name):
    assert objective_for_task(task).name == name


def test_threshold_must_be_finite():
    with pytest.raises(ValueError, match="finite"):
        OBJECTIVES.create("embed-cos", threshold=float("nan"))
