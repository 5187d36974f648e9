"""Checkpoints: round trips, hashes, corrupt/missing files, atomic writes, pickle safety, foreign layouts."""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from robustssl import __version__, encoders
from robustssl.encoders import checkpoints, create, load, load_state, load_with_report, save, save_state

X = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
# Smallest configurations per registered name, so every entry is round-tripped quickly.
SMALL = {"vit_tiny": {"depth": 2, "img_size": 32, "patch_size": 8},
         "vit_small": {"depth": 1, "img_size": 32, "patch_size": 8}}


def fresh(name: str = "convnet_small", seed: int = 0, **kw) -> encoders.Encoder:
    torch.manual_seed(seed)
    enc = create(name, **kw).eval()
    # Non-trivial BN statistics, so a loader that skipped buffers would be caught.
    for m in enc.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return enc


def embed(enc: encoders.Encoder, x: torch.Tensor = X) -> torch.Tensor:
    with torch.no_grad():
        return enc.embed(x)


@pytest.mark.parametrize("name", encoders.names())
def test_round_trip_every_registered_encoder(name, tmp_path):
    enc = fresh(name, **SMALL.get(name, {}))
    path = save(enc, tmp_path / "enc", method="simclr", epoch=3, config={"lr": 0.5}, extra={"note": "x"})
    assert path == tmp_path / "enc.safetensors" and path.is_file()
    sidecar = json.loads((tmp_path / "enc.json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (sidecar["name"], sidecar["method"], sidecar["epoch"]) == (name, "simclr", 3)
    assert sidecar["config"] == {"lr": 0.5} and sidecar["extra"] == {"note": "x"}
    assert sidecar["robustssl_version"] == __version__
    assert sidecar["encoder_config"] == json.loads(json.dumps(SMALL.get(name, {})))
    assert (sidecar["embed_dim"], sidecar["stride"]) == (enc.embed_dim, enc.stride)
    back, report = load_with_report(path)
    assert type(back) is type(enc) and back.name == name and not back.training
    assert report.sha256_status == "verified" and report.format == "robustssl"
    assert not report.missing and not report.unexpected
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(embed(back, x), embed(enc, x))
    for key, value in enc.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_paths_accepted_by_load(tmp_path):
    enc = fresh()
    save(enc, tmp_path / "a.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.safetensors"]
    for given in ("a", "a.safetensors", "a.json"):
        assert torch.equal(embed(load(tmp_path / given)), embed(enc))


def test_constructor_options_are_restored(tmp_path):
    enc = fresh("convnet_small", widths=(8, 16), strides=(2, 1), dual_bn=True, mean=None, std=None)
    back = load(save(enc, tmp_path / "c"))
    assert back.config == {"widths": [8, 16], "strides": [2, 1], "dual_bn": True, "mean": None, "std": None}
    assert back.normalize.identity and back.stride == 2
    assert torch.equal(embed(back), embed(enc))


def test_save_rejects_bad_metadata(tmp_path):
    with pytest.raises(TypeError, match="JSON-serializable"):
        save(fresh(), tmp_path / "x", config={"fn": print})
    with pytest.raises(ValueError, match="epoch must be a non-negative int"):
        save(fresh(), tmp_path / "x", epoch=-1)
    with pytest.raises(TypeError, match="expects an Encoder"):
        save(nn.Linear(2, 2), tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_tampered_weights_fail_the_hash(tmp_path):
    path = save(fresh(), tmp_path / "t")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 mismatch for .*t.safetensors"):
        load(path)


def test_without_sidecar_the_header_rebuilds(tmp_path):
    enc = fresh("vit_tiny", **SMALL["vit_tiny"])
    path = save(enc, tmp_path / "v")
    (tmp_path / "v.json").unlink()
    back, report = load_with_report(path)
    assert report.sha256_status == "no sidecar (not checked)"
    assert back.config == SMALL["vit_tiny"]
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert torch.equal(embed(back, x), embed(enc, x))


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load(tmp_path / "nope")
    path = save(fresh(), tmp_path / "c")
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt checkpoint metadata .*c.json"):
        load(path)
    (tmp_path / "c.json").unlink()
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or unreadable safetensors file .*c.safetensors"):
        load(path)
    (tmp_path / "config.json").write_text('{"lr": 0.1}')
    with pytest.raises(ValueError, match="config.json is not a robustssl checkpoint sidecar"):
        load(tmp_path / "config.json")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="junk.pt"):
        load(tmp_path / "junk.pt", name="convnet_small")


def test_interrupted_save_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    old = fresh(seed=0)
    path = save(old, tmp_path / "ckpt")
    before = (path.read_bytes(), (tmp_path / "ckpt.json").read_bytes())

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save(fresh(seed=1), tmp_path / "ckpt")
    assert (path.read_bytes(), (tmp_path / "ckpt.json").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.json", "ckpt.safetensors"]
    assert torch.equal(embed(load(path)), embed(old))


class _WritesMarker:
    """Unpickling this calls open(marker, "w"), i.e. creates a file: a stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_code_running_pickles_are_refused_and_run_nothing(tmp_path, writer):
    marker = tmp_path / "PWNED"
    payload = {"state_dict": fresh().state_dict(), "evil": _WritesMarker(marker)}
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    assert not marker.exists()
    with pytest.raises(ValueError, match="refused to load .*evil.pth.*never unpickles code"):
        load(path, name="convnet_small")
    assert not marker.exists()


def test_plain_torch_state_dict_loads_with_the_architecture(tmp_path):
    enc = fresh()
    torch.save(enc.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match="architecture is unknown; pass it"):
        load(tmp_path / "w.pt")
    back, report = load_with_report(tmp_path / "w.pt", name="convnet_small")
    assert report.format == "torch" and report.sha256_status == "not applicable"
    assert torch.equal(embed(back), embed(enc))


def _kuangliu(key: str) -> str:
    return key.replace(".downsample.", ".shortcut.")


def _foreign_layouts(state: dict, other: dict) -> dict:
    """Checkpoint objects as other projects write them; ``other`` (momentum copies) must NOT be picked."""
    head = {"0.weight": torch.randn(128, 512), "0.bias": torch.randn(128)}
    return {
        "ddp": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
        "solo-learn": {"state_dict": {**{f"backbone.{k}": v for k, v in state.items()},
                                      **{f"momentum_backbone.{k}": v for k, v in other.items()},
                                      **{f"projector.{k}": v for k, v in head.items()},
                                      "classifier.weight": torch.randn(10, 512)}, "epoch": 99},
        "moco": {"state_dict": {**{f"module.encoder_q.{k}": v for k, v in state.items()},
                                **{f"module.encoder_k.{k}": v for k, v in other.items()},
                                **{f"module.encoder_q.fc.{k}": v for k, v in head.items()}},
                 "arch": "resnet18", "optimizer": {"state": {}, "param_groups": []}},
        "kuangliu": {"net": {**{_kuangliu(k): v for k, v in state.items()},
                             "linear.weight": torch.randn(10, 512), "linear.bias": torch.randn(10)},
                     "acc": 93.1},
        "model-wrapper": {"model": {f"encoder.{k}": v for k, v in state.items()}},
    }


@pytest.fixture(scope="module")
def two_resnets() -> tuple[encoders.Encoder, encoders.Encoder]:
    return fresh("resnet18_cifar", seed=0), fresh("resnet18_cifar", seed=1)


@pytest.mark.parametrize("layout", ["ddp", "solo-learn", "moco", "kuangliu", "model-wrapper"])
def test_foreign_layouts_map_onto_resnet18_cifar(layout, two_resnets):
    ref, other = two_resnets
    obj = _foreign_layouts(ref.state_dict(), other.state_dict())[layout]
    enc = create("resnet18_cifar").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean mapping reports nothing missing or unexpected
        report = encoders.load_into(enc, obj, strict=True)
    assert torch.equal(embed(enc), embed(ref))
    assert not report.missing and not report.unexpected
    if layout in ("solo-learn", "moco", "kuangliu"):
        assert report.dropped  # projection / classifier heads
    if layout in ("solo-learn", "moco"):
        assert report.ignored and all("momentum" in k or "encoder_k" in k for k in report.ignored)


def test_foreign_training_checkpoint_file_loads(two_resnets, tmp_path):
    ref, other = two_resnets
    torch.save(_foreign_layouts(ref.state_dict(), other.state_dict())["moco"], tmp_path / "moco.pth.tar")
    back, report = load_with_report(tmp_path / "moco.pth.tar", name="resnet18_cifar", strict=True)
    assert report.prefix == "encoder_q." and report.format == "torch"
    assert torch.equal(embed(back), embed(ref))


def test_acl_dual_bn_layout_and_single_bn_into_dual(tmp_path):
    ref = fresh("convnet_small", dual_bn=True)
    acl = {k.replace(".clean.", ".bn_list.0.").replace(".adv.", ".bn_list.1."): v
           for k, v in ref.state_dict().items()}
    back = load_with_report(_save_pt(acl, tmp_path / "acl.pt"), name="convnet_small",
                            encoder_kwargs={"dual_bn": True}, strict=True)[0]
    for branch in ("clean", "adv"):
        with encoders.bn_branch(back, branch), encoders.bn_branch(ref, branch):
            assert torch.equal(embed(back), embed(ref))
    single = fresh("convnet_small", seed=2)
    dual = load(_save_pt(single.state_dict(), tmp_path / "single.pt"), name="convnet_small",
                encoder_kwargs={"dual_bn": True}, strict=True)
    for branch in ("clean", "adv"):
        with encoders.bn_branch(dual, branch):
            assert torch.equal(embed(dual), embed(single))


def _save_pt(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_missing_and_unexpected_keys_warn_or_raise(tmp_path):
    state = fresh().state_dict()
    state.pop("blocks.3.bn.weight")
    state["blocks.9.conv.weight"] = torch.zeros(1)
    path = _save_pt(state, tmp_path / "partial.pt")
    with pytest.warns(UserWarning, match=r"1 missing key.*blocks\.3\.bn\.weight.*1 unexpected.*blocks\.9"):
        _, report = load_with_report(path, name="convnet_small")
    assert report.missing == ["blocks.3.bn.weight"] and report.unexpected == ["blocks.9.conv.weight"]
    with pytest.raises(ValueError, match="missing key.*strict=True"):
        load(path, name="convnet_small", strict=True)


def test_wrong_architecture_is_a_clear_error(tmp_path):
    path = save(fresh("convnet_small"), tmp_path / "small")
    with pytest.raises(ValueError, match="wrong shape for this encoder"):
        load(path, name="convnet_small", encoder_kwargs={"widths": (16, 32, 64, 128)})
    with pytest.raises(ValueError, match="no tensor of the checkpoint matches"):
        load(path, name="vit_tiny")


def test_vit_position_embeddings_are_resampled_on_load(tmp_path):
    enc = fresh("vit_tiny", depth=1, img_size=32, patch_size=8)
    path = save(enc, tmp_path / "vit")
    big, report = load_with_report(path, name="vit_tiny", encoder_kwargs={"depth": 1, "img_size": 64,
                                                                         "patch_size": 8})
    assert report.resampled == ["pos_embed"] and big.pos_embed.shape == (1, 1 + 64, 192)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    # Resampling once at load time == resampling on the fly for a 64x64 input.
    assert torch.allclose(embed(big, x), embed(enc, x), atol=1e-5)


def test_from_module_checkpoints_need_load_into(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    enc = encoders.from_module(net, lambda m, x: m(x), mean=None, std=None)
    path = save(enc, tmp_path / "mod")
    with pytest.raises(ValueError, match="from_module.*load_into"):
        load(path)
    twin = encoders.from_module(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                                lambda m, x: m(x), mean=None, std=None)
    encoders.load_into(twin, checkpoints._load_safetensors(path), strict=True)
    assert torch.equal(embed(twin), embed(enc))


def test_state_round_trip_resumes_an_optimizer_exactly(tmp_path):
    torch.manual_seed(0)
    head = nn.Linear(4, 3)
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    inputs = torch.randn(8, 4)
    for _ in range(2):
        opt.zero_grad()
        head(inputs).square().mean().backward()
        opt.step()
    rng = torch.Generator().manual_seed(5).get_state()
    path = save_state(tmp_path / "trainer", {"head": head.state_dict(), "optimizer": opt.state_dict(),
                                             "step": 2, "pair": (1, None), "rng": rng})
    assert path.name == "trainer.safetensors"
    state = load_state(path)
    assert state["step"] == 2 and state["pair"] == (1, None)
    assert torch.equal(state["rng"], torch.Generator().manual_seed(5).get_state())
    assert list(state["optimizer"]["state"]) == [0, 1]  # int keys survive
    head2 = nn.Linear(4, 3)
    head2.load_state_dict(state["head"])
    opt2 = torch.optim.SGD(head2.parameters(), lr=0.5, momentum=0.1)
    opt2.load_state_dict(state["optimizer"])
    for model, optim in ((head, opt), (head2, opt2)):
        optim.zero_grad()
        model(inputs).square().mean().backward()
        optim.step()
    assert torch.equal(head.weight, head2.weight) and torch.equal(head.bias, head2.bias)


def test_state_errors(tmp_path):
    with pytest.raises(TypeError, match="cannot store object at state.x"):
        save_state(tmp_path / "s", {"x": object()})
    path = save(fresh(), tmp_path / "enc")
    with pytest.raises(ValueError, match="not a robustssl state file"):
        load_state(path)
