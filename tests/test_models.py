import pytest
import torch
import torchvision.models as tvm

import camlens
from camlens.capture import CamlensError
from camlens.models import GapNet, Preprocess, build_model, load_model, read_class_names, save_checkpoint


def test_checkpoint_round_trip_carries_arch_classes_and_preprocessing(tmp_path):
    model = GapNet(num_classes=3).eval()
    pre = Preprocess((40, 48), (0.1, 0.2, 0.3), (0.5, 0.6, 0.7))
    path = save_checkpoint(
        tmp_path / "m.safetensors", model, arch="gapnet", class_names=["a", "b", "c"], preprocess=pre
    )
    loaded = load_model(path)
    assert loaded.arch == "gapnet" and loaded.class_names == ["a", "b", "c"] and loaded.preprocess == pre
    x = torch.rand(2, 3, 40, 48)
    torch.testing.assert_close(loaded.model(x), model(x))
    assert loaded.model.training is False


def test_plain_state_dict_loads_weights_only_with_num_classes_inferred(tmp_path):
    model = tvm.resnet18(num_classes=7).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "r.pth")
    loaded = load_model(tmp_path / "r.pth", arch="resnet18", classes=[str(i) for i in range(7)], size=64)
    assert loaded.model.fc.out_features == 7 and loaded.preprocess.size == (64, 64)
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(loaded.model(x), model(x))


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"state_dict": GapNet(2)}, tmp_path / "evil.pt")  # a whole module needs unpickling
    with pytest.raises(CamlensError, match="weights-only"):
        load_model(tmp_path / "evil.pt", arch="gapnet")


def test_checkpoint_that_does_not_fit_says_so(tmp_path):
    torch.save(GapNet(2).state_dict(), tmp_path / "g.pt")
    with pytest.raises(CamlensError, match="does not fit resnet18"):
        load_model(tmp_path / "g.pt", arch="resnet18")
    with pytest.raises(CamlensError, match="no architecture"):
        load_model(tmp_path / "g.pt")


def test_pretrained_weights_offline_give_a_one_line_remedy(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: the download is attempted

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CamlensError, match="--weights none") as info:
        build_model("resnet18", weights="IMAGENET1K_V1")
    assert "resnet18-f37072fd.pth" in str(info.value)


def test_names_and_preprocessing_from_torchvision_weight_metadata(monkeypatch):
    monkeypatch.setattr(tvm, "get_model", lambda arch, weights=None, **kw: tvm.resnet18(num_classes=1000))
    loaded = load_model(arch="resnet50", weights="IMAGENET1K_V2")
    assert loaded.class_names[0] == "tench" and len(loaded.class_names) == 1000
    assert loaded.preprocess.size == (224, 224)


def test_class_names_sources(tmp_path):
    (tmp_path / "names.txt").write_text("cat\ndog\n\n")
    assert read_class_names(str(tmp_path / "names.txt"), 2) == ["cat", "dog"]
    assert read_class_names("stl10", 10)[7] == "monkey"
    with pytest.raises(CamlensError, match="3 class names"):
        read_class_names(["a", "b", "c"], 2)
    with pytest.raises(CamlensError, match="unknown architecture"):
        build_model("resnet5000")


def test_preprocess_resizes_whole_image_and_normalizes():
    pre = Preprocess((4, 4), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    out = pre(torch.full((3, 8, 6), 0.75))
    assert out.shape == (1, 3, 4, 4) and torch.allclose(out, torch.ones_like(out))


def test_gapnet_is_a_cam_model_with_stride_4():
    with camlens.CAM(GapNet(5).eval()) as cam:
        res = cam(torch.rand(2, 3, 64, 64))
    assert res.maps.shape == (2, 1, 16, 16) and res.layer == "features"


def test_one_rule_reads_random_initialization_from_a_weights_name():
    from camlens.backbones import no_weights
    from camlens.training import TrainConfig

    assert [no_weights(w) for w in (None, "none", "None", "DEFAULT", "IMAGENET1K_V1", "imagenet")] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    assert TrainConfig(weights="None").pretrained is False and TrainConfig(weights="DEFAULT").pretrained is True
