"""What a new user does in the first hour (issue #23): their own nn.Module in `camlens.explain`, a `load_model`
result in every explainer and in `layer_names`, a flat class list for one image, a short repr, `figure()` shown
by Jupyter in a fresh kernel."""

import re

import pytest
import torch

import camlens
from camlens.models import IMAGENET_MEAN, IMAGENET_STD, GapNet, LoadedModel, Preprocess
from camlens.render import overlay


@pytest.fixture
def net():
    return GapNet(num_classes=4, width=4).eval()


@pytest.fixture
def image():
    return torch.rand(3, 20, 24)


def _imagenet(image: torch.Tensor) -> torch.Tensor:
    """The documented default preprocessing of a plain module, written out: ImageNet mean/std, no resize."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((image - mean) / std)[None]


def test_explain_takes_a_plain_module_with_imagenet_normalization_at_the_image_size(net, image):
    exp = camlens.explain(net, image)
    with camlens.CAM(net) as cam:
        expected = cam(_imagenet(image))
    torch.testing.assert_close(exp.result.maps, expected.maps)
    torch.testing.assert_close(exp.result.logits, expected.logits)
    assert exp.class_names == ["0", "1", "2", "3"]
    assert exp.predictions[0][0] == str(int(expected.logits.argmax()))


def test_explain_plain_module_takes_size_preprocess_and_class_names(net, image):
    names = ["cat", "dog", "car", "cup"]
    sized = camlens.explain(net, image, size=16, class_names=names)
    with camlens.CAM(net) as cam:
        expected = cam(Preprocess((16, 16))(image))
    torch.testing.assert_close(sized.result.maps, expected.maps)
    assert sized.result.maps.shape[-2:] == (4, 4) and sized.predictions[0][0] == names[int(expected.classes[0, 0])]
    custom = camlens.explain(net, image, preprocess=lambda img: img * 2 - 1)  # (3, H, W) out is batched for you
    with camlens.CAM(net) as cam:
        torch.testing.assert_close(custom.result.maps, cam(image[None] * 2 - 1).maps)


def test_explain_overrides_a_loaded_models_size(net, image):
    loaded = LoadedModel(net, list("abcd"), Preprocess((32, 32), (0.5,) * 3, (0.25,) * 3), "gapnet")
    exp = camlens.explain(loaded, image, size=(8, 12))
    with camlens.CAM(net) as cam:
        torch.testing.assert_close(exp.result.maps, cam(Preprocess((8, 12), (0.5,) * 3, (0.25,) * 3)(image)).maps)


def test_a_flat_class_list_explains_those_classes_of_the_single_image(net, image):
    flat = camlens.explain(net, image, classes=[2, 0])
    table = camlens.explain(net, image, classes=[[2, 0]])
    assert flat.result.classes.tolist() == [[2, 0]]
    torch.testing.assert_close(flat.result.maps, table.result.maps)
    with camlens.GradCAM(net) as gradcam:  # the same rule in every explainer, for a batch of one
        assert gradcam(_imagenet(image), [3, 1]).classes.tolist() == [[3, 1]]
        with pytest.raises(camlens.CamlensError, match="one class per sample"):
            gradcam(_imagenet(image).expand(2, -1, -1, -1), [3, 1, 0])


@pytest.mark.parametrize("method", ["CAM", "GradCAM", "ScoreCAM", "EigenCAM"])
def test_every_explainer_and_layer_names_accept_a_loaded_model(net, method):
    loaded = LoadedModel(net, list("abcd"), Preprocess((16, 16)), "gapnet")
    x = torch.randn(1, 3, 16, 16)
    with getattr(camlens, method)(loaded) as on_loaded, getattr(camlens, method)(net) as on_module:
        torch.testing.assert_close(on_loaded(x).maps, on_module(x).maps)
    assert camlens.layer_names(loaded) == camlens.layer_names(net)
    with camlens.GradCAM(loaded, layer="features.2") as named:
        assert named(x).layer == "features.2"


def test_explain_refuses_what_is_not_a_model(image):
    with pytest.raises(camlens.CamlensError, match="nn.Module"):
        camlens.explain("resnet50", image)  # type: ignore[arg-type]


def test_explanation_repr_is_one_short_line(net, image):
    exp = camlens.explain(net, image, classes=[1, 3], class_names=list("abcd"))
    text = repr(exp)
    assert "\n" not in text and len(text) < 200
    assert re.fullmatch(r"Explanation\(cam, image 20x24, maps 5x6 at 'features': b [0-9.]+%, d [0-9.]+%\)", text)


def test_figure_renders_as_png_for_jupyter_and_takes_a_colormap(net, image):
    exp = camlens.explain(net, image)
    jet, gray = exp.figure(), exp.figure(colormap="gray")
    assert jet._repr_png_().startswith(b"\x89PNG")  # what IPython displays when no backend was set up
    raw_jet, raw_gray = jet.axes[0].images[0], gray.axes[0].images[0]
    assert raw_jet.get_cmap().name == "jet" and raw_gray.get_cmap().name == "gray"
    expected = overlay(exp.image, exp.result.maps[0, 0], colormap="gray").permute(1, 2, 0).numpy()
    assert (gray.axes[2].images[0].get_array() == expected).all()


@pytest.mark.parametrize("method, passes", [("ScoreCAM", 1), ("SSCAM", 3), ("ISCAM", 2), ("AblationCAM", 1)])
def test_slow_methods_report_every_masked_pass_to_a_progress_callback(net, method, passes):
    """Masked rows: one per channel (32 in GapNet width 4) and image (2), times SS-CAM's noise draws or IS-CAM's
    steps; the callback hears of the total before the first pass, then after each pass."""
    calls: list[tuple[int, int]] = []
    options = {"SSCAM": {"num_samples": 3}, "ISCAM": {"num_samples": 2}}.get(method, {})
    x = torch.randn(2, 3, 16, 16)
    with getattr(camlens, method)(net, batch_size=10, progress=lambda d, t: calls.append((d, t)), **options) as e:
        with_progress = e(x).maps
    with getattr(camlens, method)(net, batch_size=10, **options) as e:
        torch.testing.assert_close(with_progress, e(x).maps)
    total = 2 * 32 * passes
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and all(t == total for _, t in calls)


def test_progress_true_draws_a_bar_with_the_time_left_on_stderr(net, capsys):
    with camlens.ScoreCAM(net, progress=True) as scorecam:
        scorecam(torch.randn(1, 3, 16, 16))
    err = capsys.readouterr().err
    assert re.search(r"scorecam: .*\d+/32 \[\d\d:\d\d<", err) and "pass/s" in err  # done/total [elapsed<left


def test_faithfulness_metrics_take_a_loaded_model(net):
    from camlens.metrics.faithfulness import class_scores, deletion_curve

    loaded = LoadedModel(net, list("abcd"), Preprocess((16, 16)), "gapnet")
    x, maps = torch.randn(2, 3, 16, 16), torch.rand(2, 16, 16)
    torch.testing.assert_close(class_scores(loaded, x, [1, 2]), class_scores(net, x, [1, 2]))
    torch.testing.assert_close(
        deletion_curve(loaded, x, maps, 0, steps=4).auc, deletion_curve(net, x, maps, 0, steps=4).auc
    )
