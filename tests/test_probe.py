"""The linear probe (Zhou et al., Section 4): the fit equals scikit-learn's LogisticRegression on the same
features, the features are the network's pooled map, and the probed network keeps the exact CAM identity."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from camlens import CAM, CamlensError
from camlens.cli import main
from camlens.models import GapNet, Preprocess, load_model, save_checkpoint
from camlens.training.probe import PROBE, fit_logistic, linear_probe, pooled_features


def _blobs(n: int = 240, k: int = 10, c: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % c
    x = torch.randn(c, k, generator=g, dtype=torch.float64)[y] + 1.5 * torch.randn(
        n, k, generator=g, dtype=torch.float64
    )
    return x, y


def test_fit_equals_scikit_learn_logistic_regression():
    x, y = _blobs()
    weight, bias, _ = fit_logistic(x, y, 4, C=0.5, tol=1e-10)
    ref = LogisticRegression(C=0.5, tol=1e-12, max_iter=10_000).fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(weight.numpy(), ref.coef_, atol=2e-6, err_msg="same objective, same minimizer")
    np.testing.assert_allclose(bias.numpy(), ref.intercept_ - ref.intercept_.mean(), atol=2e-6)
    np.testing.assert_allclose(torch.softmax(x @ weight.T + bias, 1).numpy(), ref.predict_proba(x.numpy()), atol=1e-6)


def _images(n: int = 36, size: int = 24) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three classes told apart by which colour channel is bright, in batches of 12."""
    g = torch.Generator().manual_seed(1)
    y = torch.arange(n) % 3
    x = 0.3 * torch.rand(n, 3, size, size, generator=g)
    x[torch.arange(n), y] += 0.5
    return [(x[i : i + 12], y[i : i + 12]) for i in range(0, n, 12)]


def test_probe_fits_the_pooled_features_and_keeps_the_cam_identity():
    model = GapNet(num_classes=10, width=4).eval()
    batches = _images()
    result = linear_probe(model, batches, 3, C=2.0, standardize=False)
    assert result.classifier == "fc" and model.fc.out_features == 3 and result.num_images == 36
    x = torch.cat([b[0] for b in batches])
    with torch.no_grad():
        by_hand = model.pool(model.features(x)).flatten(1).double()
    z, y, _ = pooled_features(model, batches)
    torch.testing.assert_close(z, by_hand, msg="the features are the pooled map the classifier reads")
    ref = LogisticRegression(C=2.0, tol=1e-12, max_iter=10_000).fit(z.numpy(), y.numpy())
    np.testing.assert_allclose(model.fc.weight.detach().double().numpy(), ref.coef_, atol=1e-4, rtol=1e-4)
    assert result.train_accuracy == pytest.approx(float((ref.predict(z.numpy()) == y.numpy()).mean()))
    with torch.no_grad(), CAM(model) as cam:
        res = cam(x[:4], topk=3)
    torch.testing.assert_close(res.maps.mean((-2, -1)) + res.bias, res.logits.gather(1, res.classes), rtol=0, atol=1e-5)


def test_standardized_probe_equals_a_scaler_and_logistic_regression_pipeline():
    model = GapNet(num_classes=10, width=4).eval()
    batches = _images()
    linear_probe(model, batches, 3, C=0.3)
    z, y, _ = pooled_features(model, batches)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, tol=1e-12, max_iter=10_000)).fit(
        z.numpy(), y.numpy()
    )
    logits = (z @ model.fc.weight.detach().double().T + model.fc.bias.detach().double()).numpy()
    np.testing.assert_allclose(
        torch.softmax(torch.from_numpy(logits), 1).numpy(),
        ref.predict_proba(z.numpy()),
        atol=1e-4,
        err_msg="the folded classifier on raw features is the fitted pipeline",
    )


class _ConvClassifierNet(nn.Module):
    """A 1x1-conv classifier before the pooling (SqueezeNet, Choe et al.'s InceptionV3)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(6, 5, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.classifier(self.body(x))).flatten(1)


def test_probe_replaces_a_conv_classifier_applied_before_pooling():
    model = _ConvClassifierNet().eval()
    linear_probe(model, _images(), 3)
    assert isinstance(model.classifier, nn.Conv2d) and model.classifier.out_channels == 3
    x = _images()[0][0][:2]
    with torch.no_grad(), CAM(model) as cam:
        res = cam(x, topk=2)
    torch.testing.assert_close(res.maps.mean((-2, -1)) + res.bias, res.logits.gather(1, res.classes), rtol=0, atol=1e-5)


def test_probe_bad_input_is_a_one_line_error():
    x, y = _blobs(n=12)
    with pytest.raises(CamlensError, match="C=0 must be positive"):
        fit_logistic(x, y, 4, C=0)
    with pytest.raises(CamlensError, match="labels must be in 0..2"):
        fit_logistic(x, y, 3)
    with pytest.raises(CamlensError, match="no training images"):
        linear_probe(GapNet(3, width=4), [], 3)


def test_cli_linear_probe_writes_a_self_describing_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    backbone = save_checkpoint(
        tmp_path / "g.safetensors",
        GapNet(10).eval(),
        arch="gapnet",
        class_names=list("abcdefghij"),
        preprocess=Preprocess((32, 32)),
    )
    code = main(
        [
            "train",
            "--linear-probe",
            str(backbone),
            "--data",
            "builtin",
            "--num-train",
            "40",
            "--num-val",
            "20",
            "--out",
            str(tmp_path / "out"),
            "--probe-raw",
            "--probe-c",
            "0.5",
            "--quiet",
        ]
    )
    assert code == 0 and "val acc" in capsys.readouterr().out
    loaded = load_model(tmp_path / "out" / PROBE)
    probe = loaded.meta["linear_probe"]
    assert loaded.arch == "gapnet" and loaded.preprocess.size == (32, 32) and probe["train_images"] == 40
    assert probe["backbone"] == str(backbone) and 0.0 <= probe["val_acc"] <= 1.0
    assert probe["C"] == 0.5 and probe["standardize"] is False
    # the backbone is unchanged: only the classifier differs from the checkpoint it started from
    start = load_model(backbone).model.state_dict()
    assert all(torch.equal(v, start[k]) for k, v in loaded.model.state_dict().items() if not k.startswith("fc."))
