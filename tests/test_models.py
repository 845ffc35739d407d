import pytest
import torch
import torchvision

from cxrjobs.errors import CxrError
from cxrjobs.models import build_model, load_state_checked, load_weights_file
from cxrjobs.models.smallcnn import flat_features


def test_smallcnn_matches_paper_shapes():
    assert flat_features(224) == 12 * 53 * 53
    assert flat_features(512) == 187_500
    for size in (224, 512):
        m = build_model("smallcnn", 14, size)
        assert m(torch.zeros(2, 1, size, size)).shape == (2, 14)
        assert m.classifier[1].in_features == flat_features(size)
    with pytest.raises(ValueError):
        flat_features(12)


@pytest.mark.parametrize("name", ["resnext50", "densenet121"])
def test_torchvision_nets_take_gray_input(name):
    m = build_model(name, 2, 64)
    assert m(torch.zeros(1, 1, 64, 64)).shape == (1, 2)


def test_resnext_loads_imagenet_style_weights_from_file(tmp_path):
    # An RGB 1000-class state dict stands in for ImageNet weights (no download here).
    ref = torchvision.models.resnext50_32x4d(weights=None)
    path = tmp_path / "resnext50_imagenet.pth"
    torch.save(ref.state_dict(), path)
    m = build_model("resnext50", 14, 224, pretrained=str(path))
    assert torch.equal(m.conv1.weight, ref.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(m.layer4[0].conv1.weight, ref.layer4[0].conv1.weight)
    assert m.fc.out_features == 14


def test_checkpoint_for_other_model_lists_mismatched_keys(tmp_path):
    path = tmp_path / "cnn.pt"
    torch.save({"model": build_model("smallcnn", 15, 224).state_dict()}, path)
    target = build_model("smallcnn", 14, 224)
    with pytest.raises(CxrError) as e:
        load_state_checked(target, load_weights_file(str(path)), str(path))
    assert "classifier.5.weight: checkpoint (15, 60) vs model (14, 60)" in str(e.value)
    assert "shape mismatches" in str(e.value)
    with pytest.raises(CxrError, match="missing keys"):
        load_state_checked(build_model("resnext50", 14, 224), load_weights_file(str(path)), str(path))


def test_weights_file_is_loaded_without_unpickling_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CxrError, match="not a loadable weights file"):
        load_weights_file(str(path))


def test_smallcnn_refuses_pretrained():
    with pytest.raises(CxrError, match="no ImageNet weights"):
        build_model("smallcnn", 14, 224, pretrained="imagenet")


def test_smallcnn_pool_before_relu_equals_the_papers_order():
    from torch import nn
    torch.manual_seed(0)
    m = build_model("smallcnn", 3, 64)
    c1, c2 = m.features[0], m.features[3]
    paper = nn.Sequential(c1, nn.ReLU(), nn.MaxPool2d(2), c2, nn.ReLU(), nn.MaxPool2d(2), m.classifier)
    x = torch.randn(4, 1, 64, 64)
    ours = m(x)
    ours.sum().backward()
    g_ours = c1.weight.grad.clone()
    c1.weight.grad = None
    ref = paper(x)
    ref.sum().backward()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, c1.weight.grad)
