import gzip

import numpy as np
import pytest
import torch

from tguide.data.usps import load_usps, resize_digits
from tguide.errors import TGuideError

# class counts from zip.info.txt (the ESL copy of the same digits)
TRAIN_COUNTS = [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]
TEST_COUNTS = [359, 264, 198, 166, 200, 160, 170, 147, 166, 177]


@pytest.mark.parametrize("train, counts", [(True, TRAIN_COUNTS), (False, TEST_COUNTS)])
def test_real_usps_counts_shapes(data_root, train, counts):
    x, y = load_usps(data_root, train=train)
    assert x.shape == (sum(counts), 28, 28) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and torch.bincount(y, minlength=10).tolist() == counts


def test_pad_mode_matches_esl_copy_and_mnist_frame(data_root):
    """First test digit vs the ESL text file (independent reader): same label, same image after resize."""
    x, y = load_usps(data_root, train=False, mode="pad")
    with gzip.open(data_root / "usps" / "zip.test.gz", "rt") as fh:
        row = np.array(fh.readline().split(), dtype=np.float64)
    assert int(row[0]) == int(y[0])
    ref = torch.from_numpy(((row[1:].reshape(16, 16) + 1) / 2).astype(np.float32))
    expected = resize_digits(ref[None], "pad")[0]
    assert (x[0].int() - expected.int()).abs().max() <= 2  # torchvision rounds [-1,1] to uint8 first
    border = torch.ones(28, 28, dtype=torch.bool)
    border[4:24, 4:24] = False
    assert int(x[:, border].max()) == 0  # a 20×20 digit inside a black 28×28 frame, like MNIST
    assert x.float().mean() > 10  # ink is white (+1 → 255)


def test_resize_modes_on_constant_image():
    ones = torch.ones(2, 16, 16)
    pad = resize_digits(ones, "pad")
    assert pad.shape == (2, 28, 28)
    assert torch.all(pad[:, 4:24, 4:24] == 255) and int(pad.sum()) == 2 * 400 * 255
    assert torch.all(resize_digits(ones, "stretch") == 255)
    with pytest.raises(TGuideError, match="resize mode"):
        resize_digits(ones, "crop")
