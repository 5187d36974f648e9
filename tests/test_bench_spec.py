"""Benchmark specs: the shipped ones validate; bad input is a clear error naming the key, raised before any
work (no run folder is created); plans expand into the expected cells with order-independent hashes."""

import copy
import importlib.util

import pytest
import torch
import yaml

from robustssl import encoders
from robustssl.bench import plan as bench_plan
from robustssl.bench.resources import prepare
from robustssl.bench.runner import run
from robustssl.bench.spec import SpecError, apply_overrides, from_dict, list_specs, load_spec

TINY = {
    "name": "t",
    "device": "cpu",
    "budgets": {"n_train": 16, "n_val": 8, "n_test": 8, "batch_size": 4, "steps": 1},
    "encoders": [{"name": "a", "encoder": "convnet_small", "options": {"widths": [4, 8], "strides": [1, 2]}}],
    "tasks": [{"task": "classification", "data": "scenes", "data_options": {"n": 20}}],
    "threats": ["clean"],
}


def spec_with(**changes):
    raw = copy.deepcopy(TINY)
    raw.update(changes)
    return raw


def test_shipped_specs_validate():
    assert {"quickstart", "tiny"} <= set(list_specs())
    quick = load_spec("quickstart")
    # issue #7: the demo pretrains simclr, advcl and nim, against the random initialization
    assert [e.label for e in quick.encoders] == ["random-init", "simclr", "advcl", "nim"]
    assert {e.label: e.path for e in quick.encoders if e.source == "preset"} == {
        "random-init": "simclr-scenes-tiny", "simclr": "simclr-scenes-tiny", "advcl": "advcl-scenes-tiny",
        "nim": "nim-scenes-tiny"}
    assert [t.kind for t in quick.tasks] == ["classification", "segmentation", "depth"]
    corruptions = next(t for t in quick.threats if t.kind == "corruptions")
    assert len(corruptions.corruptions) == 19 and corruptions.severities == (1, 2, 3, 4, 5)
    autoattack = next(t for t in quick.threats if t.attack == "autoattack")
    assert [t.label for t in quick.threat_tasks(autoattack)] == ["classification"]


def test_eps_fractions_and_overrides():
    spec = from_dict(
        spec_with(threats=[{"kind": "attack", "attack": "pgd", "eps": ["8/255", 0.01, "2/255"]}])
    )
    threat = spec.threats[1]  # clean is added first
    assert spec.threats[0].kind == "clean"
    assert threat.eps == pytest.approx((2 / 255, 0.01, 8 / 255))
    raw = apply_overrides(TINY, ["budgets.n_test=3", "seed=5"])
    assert raw["budgets"]["n_test"] == 3 and raw["seed"] == 5 and TINY["budgets"]["n_test"] == 8
    with pytest.raises(SpecError, match="only budgets.KEY"):
        apply_overrides(TINY, ["encoders.x=1"])


@pytest.mark.parametrize(
    "change, where, hint",
    [
        ({"bogus": 1}, "top level", "unknown key(s) bogus; accepted: name"),
        ({"encoders": ["resnet_tiny"]}, "encoders[0]", "Valid encoder names: convnet_small"),
        (
            {"encoders": [{"name": "a", "encoder": "convnet_small", "widths": [4]}]},
            "encoders[0]",
            "unknown key(s) widths",
        ),
        (
            {"encoders": [{"name": "a", "encoder": "convnet_small", "preset": "x"}]},
            "encoders[0]",
            "exactly one",
        ),
        (
            {"encoders": [{"name": "a", "preset": "no-such-preset"}]},
            "encoders[0].preset",
            "simclr-scenes-tiny",
        ),
        (
            {"tasks": [{"task": "detection", "data": "scenes"}]},
            "tasks[0].task",
            "classification, segmentation",
        ),
        ({"tasks": [{"task": "segmentation", "data": "digits"}]}, "tasks[0].data", "has no 'mask' targets"),
        (
            {"tasks": [{"task": "classification", "data": "scenes", "protocol": "xyz"}]},
            "tasks[0].protocol",
            "slf, alf, aff, ft",
        ),
        (
            {"tasks": [{"task": "classification", "data": "scenes", "options": {"epochs": 3}}]},
            "tasks[0].options",
            "'epochs'",
        ),
        ({"tasks": [{"task": "classification", "data": "cifar10"}]}, "tasks[0]", "root"),
        ({"threats": ["clean", "fog"]}, "threats[1]", "Valid threat kind names: clean"),
        ({"threats": [{"kind": "attack", "attack": "pgdd", "eps": 0.1}]}, "threats[0].attack", "'pgd'"),
        ({"threats": [{"kind": "attack", "attack": "pgd"}]}, "threats[0]", "'eps' is required"),
        ({"threats": [{"kind": "attack", "attack": "pgd", "eps": "8/0"}]}, "threats[0].eps", "fraction"),
        (
            {"threats": [{"kind": "attack", "attack": "pgd", "eps": 0.1, "options": {"stepz": 3}}]},
            "threats[0].options",
            "stepz",
        ),
        (
            {"threats": [{"kind": "attack", "attack": "pgd", "eps": 0.1, "objective": "embed-mse"}]},
            "threats[0].objective",
            "kind: embedding",
        ),
        (
            {
                "threats": [
                    {"kind": "attack", "attack": "autoattack", "eps": 0.1, "tasks": ["classification"]}
                ],
                "tasks": [{"task": "segmentation", "data": "scenes"}],
            },
            "threats[0].tasks",
            "Valid task names",
        ),
        ({"threats": [{"kind": "corruptions", "names": ["fogg"]}]}, "threats[0].names[0]", "'fog'"),
        ({"threats": [{"kind": "corruptions", "severities": [1, 6]}]}, "threats[0].severities", "in [1, 5]"),
        ({"threats": [{"kind": "transfer", "surrogate": "zz", "eps": 0.1}]}, "threats[0]", "surrogate"),
        (
            {
                "threats": [{"kind": "shift", "data": "digits", "tasks": ["segmentation"]}],
                "tasks": [{"task": "segmentation", "data": "scenes"}],
            },
            "threats[0].tasks",
            "no 'mask' targets",
        ),
        (
            {
                "threats": [{"kind": "shift", "data": "digits"}],
                "tasks": [{"task": "depth", "data": "scenes"}],
            },
            "threats[0]",
            "applies to none of the tasks",
        ),
        ({"budgets": {"n_test": "many"}}, "budgets.n_test", "expected an int"),
        ({"budgets": {"n_test": 4, "n_attack": 8}}, "budgets.n_attack", "exceed n_test"),
        ({"threats": [{"kind": "attack", "attack": "pgd", "eps": 0.1, "n": 9}]}, "threats[0].n",
         "exceed budgets.n_test=8"),
    ],
)
def test_bad_spec_is_a_clear_error_naming_the_key(change, where, hint):
    raw = spec_with(**change)
    with pytest.raises(SpecError) as exc:
        from_dict(raw, source="bad.yaml")
    message = str(exc.value)
    assert message.startswith(f"spec bad.yaml: {where}"), message
    assert hint in message, message


def test_autoattack_on_a_segmentation_task_is_refused():
    raw = spec_with(
        tasks=[{"task": "classification", "data": "scenes"}, {"task": "segmentation", "data": "scenes"}],
        threats=[{"kind": "attack", "attack": "autoattack", "eps": 0.1, "tasks": ["segmentation"]}],
    )
    with pytest.raises(SpecError, match=r"threats\[0\].tasks: attack 'autoattack' attacks classifiers only"):
        from_dict(raw)


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)


def _checkpoint(tmp_path):
    enc = encoders.create("convnet_small", widths=(4, 8), strides=(1, 2))
    encoders.save(enc, tmp_path / "enc")
    return tmp_path / "enc.safetensors"


def test_checkpoint_that_does_not_fit_fails_before_any_work(tmp_path):
    path = _checkpoint(tmp_path)
    raw = spec_with(
        encoders=[
            {
                "name": "ck",
                "checkpoint": str(path),
                "arch": "convnet_small",
                "options": {"widths": [8, 16], "strides": [1, 2]},
            }
        ]
    )
    out = tmp_path / "runs"
    with pytest.raises(
        SpecError, match=r"encoders\[0\] \('ck'\): checkpoint .* does not load or fit: .*wrong shape"
    ):
        run(from_dict(raw), out)
    assert not out.exists()  # nothing was written: the error came before any work


def test_missing_checkpoint_and_good_checkpoint(tmp_path):
    missing = spec_with(encoders=[str(tmp_path / "nope.safetensors")])
    with pytest.raises(SpecError, match=r"encoders\[0\]: checkpoint .*nope.safetensors' not found"):
        prepare(from_dict(missing), torch.device("cpu"))
    path = _checkpoint(tmp_path)
    spec = from_dict(spec_with(encoders=[str(path)]))
    assert spec.encoders[0].label == "enc" and spec.encoders[0].source == "checkpoint"
    res = prepare(spec, torch.device("cpu"))
    assert len(res.identities["enc"]["checkpoint_sha256"]) == 64


@pytest.mark.adapters
@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("timm", "torchvision")),
    reason="timm/torchvision not installed: pip install -c constraints.txt '.[timm]'",
)
def test_encoder_that_does_not_fit_the_images(tmp_path):
    # timm's ViT asserts its 224-px input size: the 32-px scenes fail the forward check, before any work
    raw = spec_with(encoders=[{"name": "vit", "encoder": "timm:vit_tiny_patch16_224"}])
    with pytest.raises(
        SpecError, match=r"encoders\[0\] \('vit'\) does not fit the images of task 'classification'"
    ):
        run(from_dict(raw), tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_plan_of_the_tiny_spec():
    spec = load_spec("tiny")
    ids = {e.label: {"x": e.label} for e in spec.encoders}
    units = bench_plan.build_plan(spec, ids)
    cells = [c for u in units for c in u.cells]
    assert len(cells) == len({c.key for c in cells}) == 77
    # clean 6 + 4 corrupted sets x (6 + 2 drift) + shift 6; embedding 2 x 2 eps x (1 + 3);
    # pgd 2 x 3 x 2 + AA 2; transfer 3 tasks x 1 target
    kinds = {
        k: sum(len(u.cells) for u in units if u.kind == k)
        for k in ("forward", "embedding", "attack", "transfer")
    }
    assert kinds == {"forward": 44, "embedding": 16, "attack": 14, "transfer": 3}
    assert {c.threat for c in cells} >= {
        "clean",
        "pgd-linf-8/255",
        "fog-3",
        "scenes-shift",
        "embed-pgd-linf-2/255",
        "pgd-from-net-a-linf-8/255",
    }


def test_cell_hashes_follow_content_not_order(tmp_path):
    raw = yaml.safe_load(open(load_spec("tiny").source))
    ids = {"net-a": {"w": 1}, "net-b": {"w": 2}}
    base = {c.key: c.config_hash for u in bench_plan.build_plan(from_dict(raw), ids) for c in u.cells}
    shuffled = copy.deepcopy(raw)
    shuffled["threats"] = list(reversed(shuffled["threats"]))
    again = {c.key: c.config_hash for u in bench_plan.build_plan(from_dict(shuffled), ids) for c in u.cells}
    assert again == base
    changed = copy.deepcopy(raw)
    changed["threats"][2]["eps"] = ["2/255", "4/255"]  # task PGD: new radii
    after = {c.key: c.config_hash for u in bench_plan.build_plan(from_dict(changed), ids) for c in u.cells}
    same = {k for k in base if after.get(k) == base[k]}
    changed_cells = set(base) - same
    assert changed_cells and all(k[2].startswith("pgd-linf") for k in changed_cells)  # only task PGD moved
    assert {k for k in base if k[2] == "clean"} <= same
    new_weights = {
        c.key: c.config_hash
        for u in bench_plan.build_plan(from_dict(raw), {**ids, "net-b": {"w": 3}})
        for c in u.cells
    }
    assert all((new_weights[k] == base[k]) == (k[0] == "net-a" and "from" not in k[2]) for k in base)


def test_eps_text_and_chunks():
    assert bench_plan.eps_text(8 / 255, "linf") == "8/255"
    assert bench_plan.eps_text(0.5 / 255, "linf") == "0.5/255"
    assert bench_plan.eps_text(0.5, "l2") == "0.5"
    assert [list(c) for c in bench_plan.chunks(10, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.fixture
def cli(monkeypatch):
    from robustssl.cli import main as cli_main

    verbs = tuple(v for v in ("bench", "report") if v not in cli_main.VERBS)
    monkeypatch.setattr(cli_main, "VERBS", cli_main.VERBS + verbs)
    return cli_main.main


def test_cli_check_list_and_errors(cli, capsys, tmp_path):
    assert cli(["bench", "tiny", "--check"]) == 0
    assert "77 cells in 19 units" in capsys.readouterr().out
    assert cli(["bench", "--list"]) == 0
    assert {"quickstart", "tiny"} <= set(capsys.readouterr().out.split())
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec_with(encoders=["resnet_tiny"])))
    assert cli(["bench", str(bad), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"robustssl bench: error: spec {bad}: encoders[0]: unknown encoder 'resnet_tiny'")
    assert len(err.splitlines()) == 1 and not (tmp_path / "runs").exists()
    assert cli(["bench", "tiny", "--resume", "--overwrite"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert cli(["bench", "tiny", "--check", "--set", "budgets.n_test=0"]) == 2
    assert "budgets.n_test: expected an int >= 1, got 0" in capsys.readouterr().err
