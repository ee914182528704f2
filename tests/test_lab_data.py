"""The lab's data handling: standardization, --classes, string labels, images vs features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkit.data import load_dataset
from ntkit.errors import NtkitError
from ntkit.lab.config import Sizes
from ntkit.lab.dataset import prepare
from ntkit.lab.models import lab_model

CPU = torch.device("cpu")


def _prep(name, **kw):
    return prepare(name, Sizes.quick(), 0, CPU, **kw)


def test_features_are_standardized_then_put_on_the_sphere():
    d = _prep("breast_cancer")
    assert d.summary()["inputs"] == "features" and d.unit == "feature"
    assert torch.allclose(d.x_train.norm(dim=1), torch.ones(d.x_train.shape[0], dtype=torch.float64))
    # independent route: z-score with the training statistics, then unit rows
    raw = d.raw_train
    z = (raw - raw.mean(0)) / raw.std(0)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    np.testing.assert_allclose(d.x_train.numpy(), z, rtol=1e-12, atol=1e-12)
    # unstandardized: the feature with the largest scale dominates every row
    raw_d = _prep("breast_cancer", standardize=False)
    big = int(np.argmax(raw.std(0)))
    assert float(raw_d.x_train[:, big].abs().mean()) > 0.6 > 0.4 > float(d.x_train[:, big].abs().mean())
    assert raw_d.summary()["preprocessing"].startswith("centred")


def test_images_are_standardized_per_channel_and_keep_their_shape():
    d = _prep("digits")
    assert d.image_shape == (1, 8, 8) and d.unit == "pixel"
    raw = d.raw_train
    z = (raw - raw.mean()) / raw.std()
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    np.testing.assert_allclose(d.x_train.numpy(), z, rtol=1e-12, atol=1e-12)
    assert d.as_images(d.x_train).shape == (d.x_train.shape[0], 1, 8, 8)


def test_classes_option_chooses_the_pair_and_its_sign():
    d = _prep("digits", classes="8,3")
    assert d.classes == ("8", "3")
    X, y = load_dataset("digits")
    # every training row is a digit 8 (+1) or a digit 3 (−1): check against the raw rows
    rows = {tuple(r) for r in X[y == 8]}
    pos = d.raw_train[d.y_train.numpy() > 0]
    assert all(tuple(r) in rows for r in pos)
    with pytest.raises(NtkitError, match=r"class '12' is not in the target.*--classes"):
        _prep("digits", classes="3,12")
    with pytest.raises(NtkitError, match="two class names"):
        _prep("digits", classes="3")
    with pytest.raises(NtkitError, match="twice"):
        _prep("digits", classes="3,3")


def test_string_labels_in_csv_and_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 3))
    names = np.where(x[:, 0] > 0, "yes", "no").astype("<U5")
    names[:10] = "maybe"
    lines = ["a,b,c,answer"] + [f"{a},{b},{c},{s}" for (a, b, c), s in zip(x, names)]
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    d = _prep(f"csv:{tmp_path / 's.csv'}", target="answer")
    assert set(d.classes) == {"yes", "no"}
    d = _prep(f"csv:{tmp_path / 's.csv'}", target="answer", classes="yes,maybe")
    assert d.classes == ("yes", "maybe")
    np.savez(tmp_path / "s.npz", x=x, y=names)
    d = _prep(f"npz:{tmp_path / 's.npz'}", classes="no,yes")
    assert d.classes == ("no", "yes") and d.unit == "feature"
    # labels agree with the first feature's sign (the rule that made them)
    sign = np.sign(d.raw_train[:, 0])
    assert np.all(sign == -d.y_train.numpy())


def test_image_shape_for_flat_rows_and_the_cnn_needs_images(tmp_path):
    X, y = load_dataset("digits")
    np.savez(tmp_path / "flat.npz", x=X, y=y)
    d = _prep(f"npz:{tmp_path / 'flat.npz'}")
    assert d.image_shape is None
    with pytest.raises(NtkitError, match="--arch cnn needs images"):
        lab_model("cnn", d, 64, 8)
    d = _prep(f"npz:{tmp_path / 'flat.npz'}", image_shape="8,8")
    assert d.image_shape == (1, 8, 8) and lab_model("cnn", d, 64, 8).name == "cnn"
    np.savez(tmp_path / "img.npz", x=X.reshape(-1, 8, 8), y=y)
    assert _prep(f"npz:{tmp_path / 'img.npz'}").image_shape == (1, 8, 8)
    with pytest.raises(NtkitError, match="product is 64"):
        _prep(f"npz:{tmp_path / 'flat.npz'}", image_shape="7,7")


def test_shuffled_pixels_leave_the_fc_kernel_unchanged_but_not_the_cnn_kernel():
    d = _prep("digits", classes="3,8")
    x = d.x_train[:12]
    perm = torch.from_numpy(np.random.default_rng(1).permutation(d.d))
    fc = lab_model("fc", d, 64, 8)
    cnn = lab_model("cnn", d, 64, 8)
    torch.testing.assert_close(fc.kernel(x[:, perm]), fc.kernel(x), rtol=1e-12, atol=1e-12)
    k, kp = cnn.kernel(x), cnn.kernel(x[:, perm])
    assert float((k - kp).norm() / k.norm()) > 0.02
    # the CNN's finite net has that kernel: empirical NTK at 256 channels within a few %
    from ntkit.empirical import empirical_ntk

    net = lab_model("cnn", d, 64, 256).net(d.d, 0, CPU)
    emp = empirical_ntk(net, x, output="trace")
    assert float((emp - k).norm() / k.norm()) < 0.15
