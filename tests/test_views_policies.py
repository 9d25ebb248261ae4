"""Views (crop boxes, rendering, flips, mixup) and teacher-input policies on real Fashion-MNIST batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ablate import views
from ablate.config import RunConfig
from ablate.policies import POLICIES
from ablate.step import make_inputs
from ablate.views import Crops

N = 4000
KEY = jax.random.key(7)


def to_unit(images):
    """uint8 images as the [-1, 1] floats that render produces."""
    return np.asarray(images, np.float32) * (2.0 / 255.0) - 1.0


def ramp_image(n=1, size=28):
    """uint8 images whose value is linear in the pixel position: f(y, x) = 3y + 5x (max 216)."""
    y, x = np.mgrid[0:size, 0:size]
    img = (3 * y + 5 * x).astype(np.uint8)[None, :, :, None]
    return np.repeat(img, n, axis=0)


def expected_ramp(crops, resolution, size=28):
    """What bilinear sampling of the ramp through `crops` must give: the ramp at the box's sample points."""
    b = np.asarray(crops.boxes, np.float64)
    c = (np.arange(resolution) + 0.5) / resolution
    ys = np.clip((b[:, 0:1] + c[None] * b[:, 2:3]) * size - 0.5, 0, size - 1)  # (B, R)
    xs = np.clip((b[:, 1:2] + c[None] * b[:, 3:4]) * size - 0.5, 0, size - 1)
    xs = np.where(np.asarray(crops.flips)[:, None], xs[:, ::-1], xs)
    f = 3 * ys[:, :, None] + 5 * xs[:, None, :]
    return (f * (2.0 / 255.0) - 1.0)[..., None]


# ----------------------------------------------------------------------------- crop boxes

@pytest.mark.parametrize("name", sorted(views.VIEWS))
@pytest.mark.parametrize("batch_of", [N, (N, 28, 28, 1)])
def test_crop_boxes_lie_inside_the_image(name, batch_of):
    """Every view's boxes (y0, x0, h, w) have positive size and lie within [0, 1] of the source image, whether the
    draw is given the batch size or the shape of its images."""
    c = views.VIEWS[name](KEY, batch_of)
    b = np.asarray(c.boxes)
    assert b.shape == (N, 4) and c.flips.shape == (N,)
    y0, x0, h, w = b.T
    assert (h > 0).all() and (w > 0).all()
    assert (y0 >= 0).all() and (x0 >= 0).all()
    assert (y0 + h <= 1 + 1e-6).all() and (x0 + w <= 1 + 1e-6).all()


def test_deterministic_views_have_fixed_boxes_and_no_flip():
    """rs is the whole image and cc the central 0.8 x 0.8 box, both unflipped whatever the key."""
    rs, cc = views.resize(KEY, 3), views.central_crop(jax.random.key(99), 3)
    np.testing.assert_array_equal(np.asarray(rs.boxes), np.tile([0.0, 0.0, 1.0, 1.0], (3, 1)))
    np.testing.assert_allclose(np.asarray(cc.boxes), np.tile([0.1, 0.1, 0.8, 0.8], (3, 1)), atol=1e-7)
    assert not np.asarray(rs.flips).any() and not np.asarray(cc.flips).any()


def test_random_crop_is_a_mild_crop_with_random_position_and_flip():
    """rc boxes are 0.8 of each side at offsets spread over [0, 0.2], flipped about half the time."""
    c = views.random_crop(KEY, N)
    y0, x0, h, w = np.asarray(c.boxes).T
    np.testing.assert_allclose(h, 0.8)
    np.testing.assert_allclose(w, 0.8)
    assert y0.min() < 0.01 and y0.max() > 0.19 and x0.min() < 0.01 and x0.max() > 0.19
    assert 0.45 < np.asarray(c.flips).mean() < 0.55


@pytest.mark.parametrize("min_area", [0.05, 0.25])
def test_inception_crop_area_and_aspect(min_area):
    """ic boxes on a 28 px image are whole pixels with areas in [min_area, 1], spanning it, and aspect w/h in
    [0.75, 1.33] up to the rounding of the width to a pixel (TF: width = round(height * r)), spanning it."""
    c = views.inception_crop(KEY, (N, 28, 28, 1), min_area)
    px = np.asarray(c.boxes, np.float64) * 28
    np.testing.assert_allclose(px, np.rint(px), atol=1e-4)
    y0, x0, h, w = np.rint(px).astype(int).T
    area = h * w / 28 ** 2
    assert (area >= min_area).all() and (area <= 1).all()
    assert area.min() < min_area + 0.02 and area.max() == 1
    aspect = w / h
    assert (np.abs(w - np.clip(h * aspect, 0.75 * h, 1.33 * h)) <= 0.5).all()  # w = round(h * r), r in range
    assert aspect.min() < 0.77 and aspect.max() > 1.3
    assert 0.45 < np.asarray(c.flips).mean() < 0.55


def test_inception_crop_position_is_random_within_the_free_range():
    """ic boxes are placed at every whole-pixel offset TF draws: y in [0, 28 - h) (the last, flush with the edge,
    only when the box spans the side), spanning it; likewise x."""
    c = views.inception_crop(KEY, (N, 28, 28, 1), 0.05)
    y0, x0, h, w = np.rint(np.asarray(c.boxes, np.float64) * 28).astype(int).T
    for off, side in ((y0, h), (x0, w)):
        assert ((off >= 0) & ((off < 28 - side) | ((off == 0) & (side == 28)))).all()
        small = side < 14
        rel = off[small] / (28 - side[small] - 1)
        assert rel.min() == 0 and rel.max() == 1 and 0.4 < rel.mean() < 0.6


# ----------------------------------------------------------------------------- rendering

def test_identity_box_at_native_resolution_reproduces_the_image(fmnist):
    """Rendering the whole-image box at 28 px gives the image scaled to [-1, 1] (to float rounding; exact as uint8)."""
    images = fmnist.train.images[:64]
    out = np.asarray(views.render(images, views.resize(KEY, 64), 28))
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_allclose(out, to_unit(images), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(np.round((out + 1) * 127.5).astype(np.uint8), images)
    assert out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6


def test_flip_mirrors_the_rendered_view(fmnist):
    """A flipped crop is the horizontal mirror of the same crop unflipped (whole image: image[:, :, ::-1])."""
    images = fmnist.train.images[:32]
    c = views.random_crop(KEY, 32)
    on = Crops(c.boxes, jnp.ones(32, bool))
    off = Crops(c.boxes, jnp.zeros(32, bool))
    np.testing.assert_array_equal(np.asarray(views.render(images, on, 24)),
                                  np.asarray(views.render(images, off, 24))[:, :, ::-1])
    whole = Crops(views.resize(KEY, 32).boxes, jnp.ones(32, bool))
    np.testing.assert_allclose(np.asarray(views.render(images, whole, 28)), to_unit(images)[:, :, ::-1], atol=1e-5)
    assert not np.allclose(to_unit(images), to_unit(images)[:, :, ::-1])  # the images are not symmetric


@pytest.mark.parametrize("name", sorted(views.VIEWS))
@pytest.mark.parametrize("resolution", [14, 28, 42, 56])
def test_render_samples_the_box_at_any_resolution(name, resolution):
    """On a linear ramp image, every pixel of a render is the ramp at its point in the box, at every resolution."""
    c = views.VIEWS[name](KEY, 64)
    out = np.asarray(views.render(ramp_image(64), c, resolution))
    assert out.shape == (64, resolution, resolution, 1)
    np.testing.assert_allclose(out, expected_ramp(c, resolution), atol=1e-4)


def test_same_crop_at_two_resolutions_covers_the_same_region(fmnist):
    """The 56 px render of a crop, 2x2 average-pooled, is close to its 28 px render; another crop's is not."""
    images = fmnist.train.images[:32]
    c = views.inception_crop(KEY, 32, 0.25)
    hi = np.asarray(views.render(images, c, 56)).reshape(32, 28, 2, 28, 2, 1).mean((2, 4))
    lo = np.asarray(views.render(images, c, 28))
    other = np.asarray(views.render(images, views.inception_crop(jax.random.key(8), 32, 0.25), 28))
    err_same = np.abs(hi - lo).mean(axis=(1, 2, 3))
    err_other = np.abs(hi - other).mean(axis=(1, 2, 3))
    assert err_same.max() < 0.05
    assert np.median(err_other) > 4 * err_same.max()


# ----------------------------------------------------------------------------- mixup

@pytest.mark.parametrize("p", [0.1, 0.5, 1.0])
def test_mixup_coefficient_is_folded_into_half_to_one(p):
    """The per-batch coefficient max(a, 1 - a), a ~ Beta(p, p), lies in [0.5, 1] and spans it."""
    coefs = np.array([float(views.mixup_coefficient(jax.random.key(i), p)) for i in range(300)])
    assert (coefs >= 0.5).all() and (coefs <= 1.0).all()
    assert coefs.min() < 0.55 and coefs.max() > 0.95
    assert np.asarray(views.mixup_coefficient(KEY, p)).shape == ()


def test_mixup_p_zero_gives_coefficient_one():
    """mixup_p = 0 disables mixing: the coefficient is exactly 1 and mix returns the batch unchanged."""
    coef = views.mixup_coefficient(KEY, 0.0)
    assert float(coef) == 1.0
    x = jnp.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(np.asarray(views.mix(x, coef)), np.asarray(x))


def test_mix_pairs_each_example_with_the_previous_one():
    """mix(x, c)[i] = c * x[i] + (1 - c) * x[i - 1] (roll by one; x[0] pairs with x[-1]), not a reversal."""
    x = np.eye(5, dtype=np.float32)
    out = np.asarray(views.mix(jnp.asarray(x), jnp.float32(0.7)))
    for i in range(5):
        expect = 0.7 * x[i] + 0.3 * x[(i - 1) % 5]
        np.testing.assert_allclose(out[i], expect, rtol=1e-6)
    # a reversal would pair 0 with 4 *and* 4 with 0; roll pairs 4 with 3
    assert out[4, 3] == pytest.approx(0.3) and out[4, 0] == 0


# ----------------------------------------------------------------------------- policies

CFG = RunConfig(teacher="fmnist_xs", mixup_p=1.0, ic_min_area=0.25)


def draw(policy, key, images):
    """The crops make_inputs draws for this key (it splits the key into a view key and a mixup key) and batch."""
    kv, km = jax.random.split(key)
    return policy.draw(kv, images.shape, CFG), km


@pytest.mark.parametrize("name", ["same/rc", "same/ic", "funmatch"])
@pytest.mark.parametrize("seed", [0, 1])
def test_consistent_policies_give_identical_inputs(batch, name, seed):
    """same/rc, same/ic and funmatch feed the teacher the bit-identical image the student sees."""
    images, labels = batch
    xs, xt, _, _ = make_inputs(POLICIES.get(name), CFG, images, labels, jax.random.key(seed), 28, 28)
    assert xt is not None
    np.testing.assert_array_equal(np.asarray(xt), np.asarray(xs))
    assert not np.allclose(np.asarray(xs), to_unit(images), atol=0.05)  # it is an augmented view


@pytest.mark.parametrize("name", ["same/rc", "same/ic", "funmatch"])
def test_consistent_policies_at_a_higher_teacher_resolution_use_the_same_crop(batch, name):
    """With a 42 px teacher and 28 px student, both inputs are the one drawn crop rendered at each resolution."""
    images, labels = batch
    key = jax.random.key(3)
    xs, xt, _, coef = make_inputs(POLICIES.get(name), CFG, images, labels, key, 28, 42)
    (s_crops, t_crops), _ = draw(POLICIES.get(name), key, images)
    np.testing.assert_array_equal(np.asarray(s_crops.boxes), np.asarray(t_crops.boxes))
    np.testing.assert_array_equal(np.asarray(s_crops.flips), np.asarray(t_crops.flips))
    assert xt.shape == (16, 42, 42, 1) and xs.shape == (16, 28, 28, 1)
    np.testing.assert_allclose(np.asarray(xs), np.asarray(views.mix(views.render(images, s_crops, 28), coef)),
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(xt), np.asarray(views.mix(views.render(images, s_crops, 42), coef)),
                               atol=1e-6)


@pytest.mark.parametrize("name", ["ind/rc", "ind/ic"])
def test_independent_policies_give_different_views_of_the_same_image(batch, name):
    """ind/rc and ind/ic render two independently drawn crops of the very same source images."""
    images, labels = batch
    key = jax.random.key(5)
    xs, xt, out_labels, coef = make_inputs(POLICIES.get(name), CFG, images, labels, key, 28, 28)
    (s_crops, t_crops), _ = draw(POLICIES.get(name), key, images)
    offsets_differ = np.abs(np.asarray(s_crops.boxes)[:, :2] - np.asarray(t_crops.boxes)[:, :2]).max(1) > 1e-4
    assert offsets_differ.all()  # every example gets its own, independent pair of crops
    np.testing.assert_array_equal(np.asarray(xs), np.asarray(views.render(images, s_crops, 28)))
    np.testing.assert_array_equal(np.asarray(xt), np.asarray(views.render(images, t_crops, 28)))
    assert not np.allclose(np.asarray(xs), np.asarray(xt), atol=0.05)
    assert float(coef) == 1.0
    np.testing.assert_array_equal(np.asarray(out_labels), np.asarray(labels))
    # a teacher fed another example (e.g. a shuffled batch) would not be reproduced from the same images
    assert not np.allclose(np.asarray(xt), np.asarray(views.render(np.roll(images, 1, 0), t_crops, 28)), atol=0.05)


@pytest.mark.parametrize("t_res", [28, 42])
def test_funmatch_mixes_both_models_with_one_coefficient_and_pairing(batch, t_res):
    """funmatch: xt = c * render + (1 - c) * roll(render) with the very same c and pairing as the student and labels."""
    images, labels = batch
    key = jax.random.key(11)
    xs, xt, out_labels, coef = make_inputs(POLICIES.get("funmatch"), CFG, images, labels, key, 28, t_res)
    (crops, _), km = draw(POLICIES.get("funmatch"), key, images)
    c = float(coef)
    assert 0.5 <= c < 1.0
    assert c == float(views.mixup_coefficient(km, CFG.mixup_p))
    for x, res in ((xs, 28), (xt, t_res)):
        plain = np.asarray(views.render(images, crops, res))
        np.testing.assert_allclose(np.asarray(x), c * plain + (1 - c) * np.roll(plain, 1, axis=0), atol=1e-6)
    np.testing.assert_allclose(np.asarray(out_labels), c * np.asarray(labels) + (1 - c) * np.roll(labels, 1, 0),
                               atol=1e-7)


def test_funmatch_without_mixup_p_is_same_ic(batch):
    """funmatch with mixup_p = 0 is exactly same/ic: coefficient 1, unmixed inputs and labels."""
    images, labels = batch
    cfg = CFG.replace(mixup_p=0.0)
    key = jax.random.key(2)
    fm = make_inputs(POLICIES.get("funmatch"), cfg, images, labels, key, 28, 28)
    si = make_inputs(POLICIES.get("same/ic"), cfg, images, labels, key, 28, 28)
    assert float(fm[3]) == 1.0
    for a, b in zip(fm[:3], si[:3]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name,view", [("fix/rs", "rs"), ("fix/cc", "cc"), ("fix/ic_ens", "ic_ens")])
def test_fixed_policies_do_not_run_the_teacher(batch, name, view):
    """Fixed policies return no teacher input and declare which precomputed view the targets come from."""
    images, labels = batch
    policy = POLICIES.get(name)
    xs, xt, out_labels, coef = make_inputs(policy, CFG, images, labels, jax.random.key(0), 28, 28)
    assert xt is None and policy.fixed_view == view and policy.teacher and not policy.runs_teacher
    assert xs.shape == (16, 28, 28, 1) and float(coef) == 1.0


def test_fix_rs_student_sees_the_resized_image_the_targets_are_computed_on(batch):
    """fix/rs: the student's input is the clean rs view, exactly what the fixed teacher's targets were computed on."""
    images, labels = batch
    xs, _, _, _ = make_inputs(POLICIES.get("fix/rs"), CFG, images, labels, jax.random.key(4), 28, 28)
    np.testing.assert_array_equal(np.asarray(xs), np.asarray(views.render(images, views.resize(KEY, 16), 28)))


@pytest.mark.parametrize("name", ["supervised", "supervised/mixup", "supervised/rc"])
def test_supervised_policies_have_no_teacher(batch, name):
    """Label-only policies have no teacher at all; supervised/mixup mixes inputs and labels together; supervised/rc
    gives the student the mild random crop that same/rc gives both models."""
    images, labels = batch
    policy = POLICIES.get(name)
    xs, xt, out_labels, coef = make_inputs(policy, CFG, images, labels, jax.random.key(6), 28, 28)
    assert xt is None and not policy.teacher and not policy.runs_teacher and policy.fixed_view is None
    if policy.mixup:
        c = float(coef)
        assert c < 1
        np.testing.assert_allclose(np.asarray(out_labels), c * np.asarray(labels) + (1 - c) * np.roll(labels, 1, 0),
                                   atol=1e-7)
    else:
        np.testing.assert_array_equal(np.asarray(out_labels), np.asarray(labels))
    if name == "supervised/rc":
        same = make_inputs(POLICIES.get("same/rc"), CFG, images, labels, jax.random.key(6), 28, 28)[0]
        np.testing.assert_array_equal(np.asarray(xs), np.asarray(same))


def test_every_registered_policy_is_covered():
    """The policy registry holds exactly the paper's eight policies plus the three label-only baselines."""
    assert set(POLICIES.names()) == {"fix/rs", "fix/cc", "fix/ic_ens", "ind/rc", "ind/ic", "same/rc", "same/ic",
                                     "funmatch", "supervised", "supervised/mixup", "supervised/rc"}
