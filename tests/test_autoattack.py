"""AutoAttack: the cascade's bookkeeping (each stage sees exactly the still-robust points, robust accuracy
never rises, the report agrees with the returned images), the published version settings, the contract
and input errors. Small budgets: the strength of the cascade is checked against torchattacks in
``test_attacks_vs_torchattacks_aa.py``."""

import pytest
import torch

from robustssl.threats import ATTACKS, ThreatModel
from robustssl.threats.attacks.apgd import APGD, APGDTargeted
from robustssl.threats.attacks.autoattack import STAGES, VERSIONS, AutoAttack
from robustssl.threats.attacks.base import Attack
from robustssl.threats.attacks.eot import EOT
from robustssl.threats.attacks.fab import FAB
from robustssl.threats.attacks.square import Square

EPS = 10 / 255


@pytest.fixture(scope="module")
def trained(small_classifier):
    return small_classifier(template_seed=11, size=10, n_train=1000, n_test=48, epochs=5)


class _Recorder(Attack):
    """Wraps a stage's attack and records what it was asked to attack and what it returned."""

    def __init__(self, inner: Attack, log: list):
        super().__init__()
        self.inner, self.log = inner, log

    def attack(self, forward, x, target, objective, threat, generator=None):
        x_adv = self.inner.attack(forward, x, target, objective, threat, generator)
        self.log.append((x.clone(), target.clone(), x_adv.clone()))
        self.counts = dict(self.inner.counts)
        return x_adv


class _RecordingAutoAttack(AutoAttack):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen: dict[str, list] = {}

    def build_stage(self, stage):
        attack, objective = super().build_stage(stage)
        return _Recorder(attack, self.seen.setdefault(stage, [])), objective


def _small(**kwargs):
    return {"steps": 5, "n_queries": 30, "n_target_classes": 3, **kwargs}


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_each_stage_sees_exactly_the_still_robust_points(trained, norm):
    model, x, y = trained
    threat = ThreatModel(norm, EPS if norm == "linf" else 0.6)
    aa = _RecordingAutoAttack(**_small())
    x_adv = aa.attack(model, x, y, None, threat, torch.Generator().manual_seed(0))
    report = aa.last_report
    assert [s.attack for s in report.stages] == list(VERSIONS["standard"])
    # Replay the cascade independently from what each stage received and returned.
    with torch.no_grad():
        robust = model(x).argmax(1) == y
        expected = x.clone()
        for stage in report.stages:
            assert stage.attacked == int(robust.sum())
            if stage.attacked == 0:
                assert stage.attack not in aa.seen
                continue
            (seen, labels, returned), = aa.seen[stage.attack]
            assert torch.equal(seen, x[robust]) and torch.equal(labels, y[robust])
            inside = threat.distance(returned, seen) <= threat.eps + 1e-6
            fooled = (model(returned).argmax(1) != labels) & inside
            rows = robust.nonzero()[:, 0][fooled]
            expected[rows] = returned[fooled]
            robust[rows] = False
            assert stage.broken == int(fooled.sum())
            assert stage.robust_accuracy == pytest.approx(robust.float().mean().item())
        assert torch.equal(x_adv, expected)
        assert torch.equal(report.robust, robust)
        assert torch.equal(model(x_adv).argmax(1) == y, robust)
    assert report.robust_accuracy < report.clean_accuracy


def test_breakdown_is_monotone_and_consistent(trained):
    model, x, y = trained
    aa = AutoAttack(**_small())
    aa.attack(model, x, y, None, ThreatModel("l2", 0.6), torch.Generator().manual_seed(1))
    report = aa.last_report
    accs = [report.clean_accuracy] + [s.robust_accuracy for s in report.stages]
    assert all(b <= a for a, b in zip(accs, accs[1:], strict=False)), accs
    previous = round(report.clean_accuracy * report.n)
    for s in report.stages:
        assert s.attacked == previous
        assert s.broken == previous - round(s.robust_accuracy * report.n)
        previous -= s.broken
        assert s.seconds >= 0 and s.fwd >= s.attacked
    assert report.stages[-1].bwd == 0  # Square is score-based
    assert sum(s.fwd for s in report.stages) + report.n == aa.counts["fwd"]
    assert "apgd-ce" in report.table() and "robust %" in report.table()
    assert report.clean_accuracy > report.robust_accuracy  # the cascade breaks something


@pytest.mark.parametrize("name", ["autoattack", "autoattack-plus", "autoattack-rand"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_registered_versions_keep_the_contract(trained, name, norm):
    model, x, y = trained
    x, y = x[:12], y[:12]
    threat = ThreatModel(norm, EPS if norm == "linf" else 0.5)
    kwargs = _small(eot_samples=2) if name == "autoattack-rand" else _small()
    if name == "autoattack-plus":
        kwargs["restarts"] = 2
    aa = ATTACKS.create(name, **kwargs)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    x_adv = aa.attack(model, x, y, None, threat, torch.Generator().manual_seed(2))
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert threat.distance(x_adv, x).max() <= threat.eps + 1e-6
    version = {"autoattack": "standard", "autoattack-plus": "plus", "autoattack-rand": "rand"}[name]
    assert tuple(s.attack for s in aa.last_report.stages) == VERSIONS[version]
    again = ATTACKS.create(name, **kwargs).attack(model, x, y, None, threat, torch.Generator().manual_seed(2))
    assert torch.equal(x_adv, again)


def test_published_settings():
    """The reference implementation's set_version: restarts, targets, queries, EOT draws."""
    standard = AutoAttack()
    apgd, _ = standard.build_stage("apgd-ce")
    assert isinstance(apgd, APGD) and apgd.steps == 100 and apgd.restarts == 1
    apgd_t, _ = standard.build_stage("apgd-t")
    assert isinstance(apgd_t, APGDTargeted) and apgd_t.n_target_classes == 9 and apgd_t.restarts == 1
    fab_t, _ = standard.build_stage("fab-t")
    assert isinstance(fab_t, FAB) and fab_t.targeted and fab_t.n_target_classes == 9 and fab_t.restarts == 1
    square, objective = standard.build_stage("square")
    assert isinstance(square, Square) and square.n_queries == 5000 and square.p_init == 0.8
    assert objective.name == "cw" and not square.rescale_schedule
    plus = AutoAttack(version="plus")
    assert plus.build_stage("apgd-ce")[0].restarts == 5 and plus.build_stage("fab")[0].restarts == 5
    dlr, objective = plus.build_stage("apgd-dlr")
    assert dlr.restarts == 5 and dlr.objective_override.name == "dlr" and objective.name == "ce"
    assert plus.build_stage("fab-t")[0].restarts == 1 and plus.build_stage("apgd-t")[0].restarts == 1
    rand = AutoAttack(version="rand")
    eot, objective = rand.build_stage("apgd-dlr")
    assert isinstance(eot, EOT) and eot.samples == 20 and isinstance(eot.inner, APGD)
    assert eot.inner.objective_override.name == "dlr" and objective.name == "ce"


def test_custom_stages_and_batching_match_one_batch(trained):
    model, x, y = trained
    threat = ThreatModel("linf", EPS)
    whole = AutoAttack(attacks=["fab-t", "square"], **_small())
    chunked = AutoAttack(attacks=["fab-t", "square"], batch_size=7, **_small())
    a = whole.attack(model, x, y, None, threat, torch.Generator().manual_seed(3))
    b = chunked.attack(model, x, y, None, threat, torch.Generator().manual_seed(3))
    assert [s.attack for s in whole.last_report.stages] == ["fab-t", "square"]
    # FAB is deterministic from the clean point: chunking cannot change which points it breaks.
    assert whole.last_report.stages[0].broken == chunked.last_report.stages[0].broken
    assert whole.last_report.stages[0].broken > 0
    for x_adv in (a, b):
        assert threat.distance(x_adv, x).max() <= threat.eps + 1e-6


def test_bad_input_is_refused(trained):
    model, x, y = trained
    threat = ThreatModel("linf", EPS)
    with pytest.raises(ValueError, match="version"):
        AutoAttack(version="fast")
    with pytest.raises(ValueError, match="stages"):
        AutoAttack(attacks=["pgd"])
    with pytest.raises(ValueError, match="steps"):
        AutoAttack(steps=0)
    with pytest.raises(ValueError, match="n_classes=5"):
        AutoAttack(n_classes=5, **_small()).attack(model, x, y, None, threat)
    with pytest.raises(ValueError, match="labels"):
        AutoAttack(**_small()).attack(model, x, y[:3], None, threat)
    with pytest.raises(ValueError, match="norms"):
        AutoAttack().attack(model, x, y, None, ThreatModel("l1", 1.0))
    assert set(STAGES) >= {s for v in VERSIONS.values() for s in v}
