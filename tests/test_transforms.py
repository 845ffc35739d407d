import torch

from cxrjobs.data.transforms import MEAN, STD, prepare
from cxrjobs.specs.train import Augment


def reference(x, draws, aug):
    ref = x.float() / 255
    ref = torch.where((draws[:, 0] < aug.hflip).view(-1, 1, 1, 1), ref.flip(-1), ref)
    ref = torch.where((draws[:, 1] < aug.vflip).view(-1, 1, 1, 1), ref.flip(-2), ref)
    ref = ref * (1 + aug.brightness * (2 * draws[:, 2] - 1)).view(-1, 1, 1, 1)
    return (ref - MEAN) / STD


def test_prepare_matches_reference_and_leaves_input_alone():
    x = torch.randint(0, 256, (16, 1, 20, 24), dtype=torch.uint8)
    before = x.clone()
    aug = Augment(hflip=0.5, vflip=0.5, brightness=0.2)
    out = prepare(x, aug, torch.Generator().manual_seed(3))
    draws = torch.rand((16, 3), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, reference(x, draws, aug), rtol=0, atol=1e-5)
    assert torch.equal(x, before)
    assert 0 < int((draws[:, 0] < 0.5).sum()) < 16  # some flipped, some not: the test means something


def test_prepare_without_augmentation_only_normalises():
    x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    torch.testing.assert_close(prepare(x), torch.tensor([[[[-MEAN / STD, (1 - MEAN) / STD]]]]))
