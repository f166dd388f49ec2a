import numpy as np
import pytest

from inversion.digit_geometry import PROPERTIES, kept, kept_table, moments


def bar(angle_deg, cx=20.0, cy=20.0, length=24, size=40, width=1.5):
    """A straight stroke through (cx, cy) at angle_deg (counter-clockwise from the x axis, y pointing up)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(float)
    t = np.radians(angle_deg)
    u, v = np.cos(t), -np.sin(t)  # screen coordinates: y down
    along = (xs - cx) * u + (ys - cy) * v
    across = -(xs - cx) * v + (ys - cy) * u
    img = ((np.abs(along) <= length / 2) & (np.abs(across) <= width)).astype(float) * 255
    return img.astype(np.uint8)


@pytest.mark.parametrize("angle", [-60, -30, 0, 30, 45, 80])
def test_moments_recover_angle_and_centroid_of_a_bar(angle):
    m = moments(bar(angle, cx=17.0, cy=22.0)[None])
    assert abs(m["cx"][0] - 17.0) < 0.6 and abs(m["cy"][0] - 22.0) < 0.6
    d = abs(m["angle"][0] - angle) % 180
    assert min(d, 180 - d) < 3.0, m["angle"]
    assert m["elongation"][0] > 3


def test_ink_is_the_sum_over_255_and_empty_images_have_no_centroid():
    img = np.zeros((2, 10, 10), np.uint8)
    img[0, 2:4, 2:5] = 255
    m = moments(img)
    assert m["ink"][0] == pytest.approx(6.0) and m["ink"][1] == 0
    assert m["cx"][0] == pytest.approx(3.0) and m["cy"][0] == pytest.approx(2.5)
    assert np.isnan(m["cx"][1])


def test_kept_separates_a_kept_from_a_discarded_property():
    rng = np.random.default_rng(0)
    n, k = 24, 5
    labels = np.repeat(np.arange(4), n // 4)
    angles = np.where(labels % 2 == 0, 30.0, -40.0) + rng.normal(0, 15, n)  # class sets the rough slant
    pos = rng.uniform(12, 28, size=(n, 2))
    inputs = np.stack([bar(a, *p) for a, p in zip(angles, pos)])
    # samples keep the angle (± 3°) but put the stroke anywhere: position discarded, orientation kept
    samples = np.stack([np.stack([bar(a + rng.normal(0, 3), *rng.uniform(12, 28, 2)) for _ in range(k)])
                        for a in angles])
    res = kept_table(inputs, samples, labels)
    assert set(res) == set(PROPERTIES)
    assert res["orientation"].kept and res["orientation"].ratio < 0.5
    assert not res["position"].kept and 0.7 < res["position"].ratio < 1.3
    # the reverse: keep position, redraw the angle within the class
    samples2 = np.stack([np.stack([bar(np.where(labels[i] % 2 == 0, 30.0, -40.0) + rng.normal(0, 15),
                                       *(pos[i] + rng.normal(0, 0.5, 2))) for _ in range(k)]) for i in range(n)])
    res2 = kept_table(inputs, samples2, labels)
    assert res2["position"].kept and res2["position"].ratio < 0.2
    assert not res2["orientation"].kept


def test_reconstructions_count_as_one_sample_and_bad_shapes_raise():
    x = np.stack([bar(a) for a in (0, 10, 20, 30)])
    r = kept(x, x[:, None], [0, 0, 1, 1], "orientation")
    assert r.error == pytest.approx(0.0, abs=1e-9) and r.n_inputs == 4
    r1 = kept(x[:, None], x[:, None, None], [0, 0, 1, 1], "orientation")  # with channel axes
    assert r1 == r
    with pytest.raises(ValueError, match="samples"):
        kept(x, x[:3, None], [0, 0, 1, 1], "ink")
    with pytest.raises(ValueError, match="unknown property"):
        kept(x, x[:, None], [0, 0, 1, 1], "colour")
    with pytest.raises(ValueError, match="non-negative"):
        moments(-np.ones((1, 4, 4)))
