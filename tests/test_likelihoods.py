"""The 8-bit likelihoods (dlogistic, dmol, categorical): exact masses that sum to 1 over the 256
levels (edge bins included), their gradients, samplers, means and shapes, against references
written here from the documented formulas and parameter layouts."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from pyro_vae import likelihoods
from pyro_vae.discretized import DiscretizedLogisticMixture
from pyro_vae.errors import PyroVAEError
from pyro_vae.likelihoods import LIKELIHOODS, build

EIGHT_BIT = ("dlogistic", "dmol", "categorical")
LEVELS = torch.arange(256, dtype=torch.float64)
HALF = 0.5 / 255


def _build(name, obs_shape, mixtures=3):
    """``build``, with ``mixtures`` passed to dmol only (the others refuse it)."""
    return build(name, obs_shape, **({"mixtures": mixtures} if name == "dmol" else {}))


def _channels(obs_shape):
    return obs_shape[0] if len(obs_shape) == 3 else 1


def _locations(obs_shape):
    return math.prod(obs_shape[1:]) if len(obs_shape) == 3 else math.prod(obs_shape)


def _decoder_out(lik, obs_shape, batch=(), dtype=torch.float32, seed=0, extreme=True):
    """Random decoder output in the documented layout (outputs, *locations); with ``extreme``, the
    location and log-scale outputs of dlogistic/dmol include far tails, bin edges and both clamps."""
    g = torch.Generator().manual_seed(seed)
    outputs, locations = lik.out_channels(_channels(obs_shape)), _locations(obs_shape)
    out = torch.randn(batch + (outputs, locations), generator=g, dtype=torch.float64)
    if extreme and not isinstance(lik, likelihoods.Categorical):
        c = _channels(obs_shape)
        if isinstance(lik, likelihoods.DLogistic):
            loc_rows, scale_rows = slice(0, c), slice(c, 2 * c)
        else:
            k = lik.mixtures
            loc_rows, scale_rows = slice(k, k + c * k), slice(k + c * k, k + 2 * c * k)
        loc = out[..., loc_rows, :]
        scale = out[..., scale_rows, :]
        n = loc.numel()
        choices = torch.tensor([-3.0, -HALF, 0.0, HALF, 0.5, 127.5 / 255, 1.0, 1 - HALF, 1 + HALF, 4.0])
        loc.copy_(torch.where(torch.rand(loc.shape, generator=g) < 0.5,
                              choices[torch.randint(len(choices), (n,), generator=g)].reshape(loc.shape).double(),
                              torch.rand(loc.shape, generator=g, dtype=torch.float64) * 1.4 - 0.2))
        scales = torch.tensor([-30.0, -12.0, -9.0, -6.0, -3.0, 0.0, 3.0, 6.0, 30.0])
        scale.copy_(torch.where(torch.rand(scale.shape, generator=g) < 0.5,
                                scales[torch.randint(len(scales), (n,), generator=g)].reshape(scale.shape).double(),
                                torch.rand(scale.shape, generator=g, dtype=torch.float64) * 18 - 12))
    return out.flatten(-2).to(dtype)


def _every_level(obs_shape, dtype):
    """(256, 1, *obs_shape): every pixel-channel at level k, for k = 0..255."""
    return (LEVELS.to(dtype) / 255).reshape((256, 1) + (1,) * len(obs_shape)).expand((256, 1) + tuple(obs_shape))


# --- the registry --------------------------------------------------------------------------------

def test_registry_levels_options_and_builders():
    assert [LIKELIHOODS[n].levels for n in ("bernoulli", "gaussian", "dlogistic", "dmol", "categorical")] == \
        [2, None, 256, 256, 256]
    assert LIKELIHOODS["dmol"].options() == {"mixtures": 10}
    assert all(LIKELIHOODS[n].reference and LIKELIHOODS[n].binary is False for n in EIGHT_BIT)
    assert build("dmol", (3, 4, 4)).mixtures == 10 and build("dmol", (3, 4, 4), mixtures=3).mixtures == 3
    assert build("gaussian", (5,), 0.2).min_scale == 0.2 and build("gaussian", (5,), min_scale=0.3).min_scale == 0.3
    assert isinstance(build("bernoulli", (5,), 0.2), likelihoods.Bernoulli)
    with pytest.raises(PyroVAEError, match="likelihood 'gaussian' takes no option mixtures"):
        build("gaussian", (5,), mixtures=3)
    with pytest.raises(PyroVAEError, match="takes no option components"):
        build("dmol", (5,), components=3)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(PyroVAEError, match="--mixtures must be a positive integer"):
            build("dmol", (5,), mixtures=bad)


def test_outputs_per_location():
    assert build("dlogistic", (3, 2, 2)).out_channels(3) == 6 and build("dlogistic", (7,)).out_channels(1) == 2
    assert build("categorical", (3, 2, 2)).out_channels(3) == 768
    dmol = build("dmol", (3, 2, 2), mixtures=5)
    assert dmol.out_channels(3) == 5 + 15 + 15 + 15 and dmol.out_channels(1) == 15  # no coefficients for C = 1


# --- exact masses --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,obs_shape", [("dlogistic", (1, 6, 5)), ("dlogistic", (3, 4, 5)),
                                            ("categorical", (1, 3, 4)), ("categorical", (3, 2, 3)),
                                            ("dmol", (1, 6, 5)), ("dmol", (40,))])
def test_masses_of_a_pixel_sum_to_one(name, obs_shape, dtype):
    """Over the 256 levels of each pixel-channel, for random and extreme parameters (tails, edges,
    both scale clamps). dmol with one channel: the mixture's own mass per pixel, by the public
    log_prob of a one-pixel observation."""
    lik = _build(name, obs_shape, 4)
    out = _decoder_out(lik, obs_shape, batch=(8,), dtype=dtype)
    if name == "dmol":
        pixels = _locations(obs_shape)
        one_pixel = build("dmol", (1,), mixtures=4)
        per_pixel = out.reshape(8, -1, pixels).movedim(-1, 1)  # (8, pixels, outputs): one observation each
        log_p = one_pixel(per_pixel).log_prob(_every_level((1,), dtype).unsqueeze(1))  # (256, 8, pixels)
    else:
        log_p = lik(out).base_dist.log_prob(_every_level(obs_shape, dtype))  # (256, 8, *obs_shape)
    assert torch.isfinite(log_p).all() and (log_p <= 0).all()
    total = log_p.exp().sum(0)
    assert (total - 1).abs().max() < (1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("channels", [1, 3])
def test_dmol_conditionals_of_each_channel_sum_to_one(channels):
    """The joint over 256^3 colours is too big: each component's mass of a channel, given fixed
    values of the channels it depends on, sums to 1 over that channel's 256 levels."""
    obs_shape = (channels, 2, 3)
    lik = build("dmol", obs_shape, mixtures=5)
    d = lik(_decoder_out(lik, obs_shape, batch=(4,)))
    fixed = torch.randint(256, (1, 4) + obs_shape, generator=torch.Generator().manual_seed(1)).float() / 255
    for c in range(channels):
        value = fixed.repeat(256, 1, 1, 1, 1)
        value[:, :, c] = (LEVELS.float() / 255).reshape(256, 1, 1, 1)
        assert isinstance(d, DiscretizedLogisticMixture) and d.mixtures == 5
        per_channel = d.channel_log_probs(value)  # (256, 4, 2, 3, C, K)
        assert per_channel.shape == (256, 4, 2, 3, channels, 5)
        total = per_channel[..., c, :].exp().sum(0)
        assert (total - 1).abs().max() < 1e-5, c
        # and the other channels' masses are those of the fixed values, the same for every level of c
        # except where they depend on it (later channels)
        earlier = per_channel[..., :c, :]
        assert torch.equal(earlier, earlier[:1].expand_as(earlier))


def _naive_pmf(k, mu, s):
    """P(k) = sigmoid((x + 1/510 - mu)/s) - sigmoid((x - 1/510 - mu)/s), the edges taking the tails,
    straight from the definition (float64; cancels in the tails)."""
    x = k / 255
    upper = torch.where(k >= 255, torch.ones_like(x * mu), torch.sigmoid((x + HALF - mu) / s))
    lower = torch.where(k <= 0, torch.zeros_like(x * mu), torch.sigmoid((x - HALF - mu) / s))
    return upper - lower


def _naive_dmol_log_prob(out, value, k_mix, channels):
    """log p(one pixel) from decoder output (..., outputs) by the documented layout: K logits, C K
    locations, C K log-scales (channel-major), then for 3 channels c_gr, c_br, c_bg (K each)."""
    logits = out[..., :k_mix]
    mu = out[..., k_mix:k_mix + channels * k_mix].unflatten(-1, (channels, k_mix))
    s = out[..., k_mix + channels * k_mix:k_mix + 2 * channels * k_mix].unflatten(-1, (channels, k_mix)).exp()
    x = value.unsqueeze(-1)  # (..., C, 1)
    if channels == 3:
        coef = torch.tanh(out[..., k_mix + 2 * channels * k_mix:].unflatten(-1, (3, k_mix)))
        mu = torch.stack((mu[..., 0, :], mu[..., 1, :] + coef[..., 0, :] * x[..., 0, :],
                          mu[..., 2, :] + coef[..., 1, :] * x[..., 0, :] + coef[..., 2, :] * x[..., 1, :]), -2)
    p = _naive_pmf((x * 255).round(), mu, s).prod(-2)  # (..., K)
    return torch.log((torch.softmax(logits, -1) * p).sum(-1))


@pytest.mark.parametrize("channels", [1, 3])
def test_dmol_matches_the_definition(channels):
    """The joint log-mass of an image equals the definition's, summed over pixels (moderate
    parameters, where the naive formula is accurate)."""
    obs_shape, k_mix = (channels, 3, 2), 4
    lik = build("dmol", obs_shape, mixtures=k_mix)
    out = _decoder_out(lik, obs_shape, batch=(5,), dtype=torch.float64, extreme=False)
    value = torch.randint(256, (5,) + obs_shape, generator=torch.Generator().manual_seed(2)).double() / 255
    value[0] = 0.0
    value[1] = 1.0  # edge bins
    per_location = out.reshape(5, -1, 6).movedim(-1, 1)  # (5, 6 locations, outputs)
    pixels = value.reshape(5, channels, 6).movedim(1, -1)  # (5, 6, C)
    expected = _naive_dmol_log_prob(per_location, pixels, k_mix, channels).sum(-1)
    torch.testing.assert_close(lik(out).log_prob(value), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["dlogistic", "categorical"])
def test_per_channel_layouts(name):
    """The documented layouts of the per-channel families, image (P C, H, W): dlogistic [locations of
    the C channels, log-scales], categorical [logit of level 0 of the C channels, of level 1, ...]."""
    obs_shape = (3, 2, 2)
    lik = build(name, obs_shape)
    out = torch.randn(2, lik.out_channels(3), 3, 4, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    out = out[..., 0, :]  # (2, P C, 4 locations)
    value = torch.randint(256, (2, 3, 4), generator=torch.Generator().manual_seed(13)).double()
    if name == "dlogistic":
        expected = _naive_pmf(value, out[:, :3], out[:, 3:].exp()).log()
    else:
        logits = out.unflatten(1, (256, 3)).movedim(1, -1)  # (2, 3, 4, 256)
        expected = logits.log_softmax(-1).gather(-1, value.long().unsqueeze(-1)).squeeze(-1)
    got = lik(out.flatten(1)).log_prob(value.reshape((2,) + obs_shape) / 255)
    torch.testing.assert_close(got, expected.sum((1, 2)), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["dlogistic", "dmol"])
def test_masses_are_exact_in_the_tails(name):
    """Far in the tails (where sigmoid differences underflow in float32 and cancel in float64) the
    log-masses are those of the definition: exact, no density-at-the-centre fallback."""
    mu, log_s = torch.tensor(0.5, dtype=torch.float64), torch.tensor(-6.5, dtype=torch.float64)
    k = torch.tensor([0.0, 3.0, 60.0, 200.0, 255.0], dtype=torch.float64)
    s = log_s.exp()
    # the definition in float64, rearranged so it does not cancel: for a bin below mu,
    # log(sigmoid(b) - sigmoid(a)) = log sigmoid(b) + log(1 - exp(log sigmoid(a) - log sigmoid(b))),
    # and in terms of sigmoid(-a), sigmoid(-b) for a bin above
    a, b = (k / 255 - HALF - mu) / s, (k / 255 + HALF - mu) / s
    la, lb = torch.nn.functional.logsigmoid(a), torch.nn.functional.logsigmoid(b)
    ua, ub = torch.nn.functional.logsigmoid(-a), torch.nn.functional.logsigmoid(-b)
    left = lb + torch.log(-torch.expm1(la - lb))  # accurate where the bin is below mu
    right = ua + torch.log(-torch.expm1(ub - ua))  # ... and above
    expected = torch.where(k / 255 < mu, left, right)
    expected[0], expected[-1] = lb[0], ua[-1]
    assert (expected < -100).all()  # exp() of these is 0 in float32
    lik = _build(name, (1, 1, 5), 1)
    if name == "dlogistic":
        out = torch.cat([mu.expand(5), log_s.expand(5)])
    else:
        out = torch.stack([torch.zeros(5, dtype=torch.float64), mu.expand(5), log_s.expand(5)]).flatten()
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        d = lik(out.to(dtype))
        got = d.base_dist.log_prob(k.to(dtype).reshape(1, 1, 5) / 255) if name == "dlogistic" else \
            torch.stack([_build(name, (1,), 1)(out.reshape(3, 5)[:, i].to(dtype)).log_prob(k[i:i + 1].to(dtype) / 255)
                         for i in range(5)])
        torch.testing.assert_close(got.flatten().double(), expected, rtol=tol, atol=0)


# --- gradients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,obs_shape", [("dlogistic", (1, 2, 2)), ("dlogistic", (3, 1, 2)),
                                            ("categorical", (1, 1, 2)), ("categorical", (3, 1, 1)),
                                            ("dmol", (1, 2, 2)), ("dmol", (3, 1, 2))])
def test_log_prob_gradients(name, obs_shape):
    """gradcheck in float64 w.r.t. the decoder output, observations including both edge levels and
    parameters including far tails (log-scales inside the clamps, where the gradient is defined)."""
    lik = _build(name, obs_shape, 2)
    out = _decoder_out(lik, obs_shape, batch=(2,), dtype=torch.float64, extreme=False)
    if name != "categorical":  # a far-tail location: the observed level lies hundreds of scales away
        out.view(2, -1, _locations(obs_shape))[0, lik.out_channels(_channels(obs_shape)) // 3, 0] = 3.0
    value = torch.randint(256, (2,) + obs_shape, generator=torch.Generator().manual_seed(3)).double() / 255
    value.view(2, -1)[0, :2] = torch.tensor([0.0, 1.0])
    out.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda o: lik(o).log_prob(value), (out,))


@pytest.mark.parametrize("name", EIGHT_BIT)
def test_float32_gradients_finite_at_extremes(name):
    obs_shape = (3, 4, 4)
    lik = _build(name, obs_shape, 3)
    out = _decoder_out(lik, obs_shape, batch=(4,))
    if name != "categorical":  # absurd locations, so far out that a bin's edges round to one float
        out.view(4, -1, 16)[:2, lik.out_channels(3) // 3, :] = torch.tensor([1e6, -1e6]).reshape(2, 1)
    out.requires_grad_(True)
    value = torch.randint(256, (4,) + obs_shape, generator=torch.Generator().manual_seed(4)).float() / 255
    value[0], value[1] = 0.0, 1.0
    log_p = lik(out).log_prob(value)
    log_p.sum().backward()
    assert torch.isfinite(log_p).all() and torch.isfinite(out.grad).all()


# --- sampling ------------------------------------------------------------------------------------

DRAWS = 100_000


def _chi_square_p(observed, expected):
    """p-value of counts against expected counts, cells expecting under 5 pooled into one."""
    observed, expected = observed.double(), expected.double()
    small = expected < 5
    obs = torch.cat([observed[~small], observed[small].sum().reshape(1)])
    exp = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    if exp[-1] == 0:
        assert obs[-1] == 0, "draws where the mass is 0"
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue


def _one_pixel_out(name, channels, seed):
    """Decoder output of one pixel with spread-out parameters (so the draws test many levels)."""
    g = torch.Generator().manual_seed(seed)
    lik = _build(name, (channels, 1, 1), 3)
    out = torch.randn(lik.out_channels(channels), generator=g)
    if name == "dlogistic":
        out[:channels] = torch.tensor([0.3, 0.97, 0.02])[:channels]
        out[channels:] = torch.tensor([-2.5, -3.0, -4.0])[:channels]  # scales of ~20, 13, 5 levels
    elif name == "dmol":
        k = 3
        out[k:k + channels * k] = torch.rand(channels * k, generator=g) * 1.2 - 0.1
        out[k + channels * k:k + 2 * channels * k] = torch.rand(channels * k, generator=g) * 2 - 5
    else:
        out *= 2
    return lik, out


@pytest.mark.parametrize("name", EIGHT_BIT)
def test_samples_follow_the_masses_one_channel(name):
    pyro.set_rng_seed(5)
    lik, out = _one_pixel_out(name, 1, seed=6)
    d = lik(out)
    draws = d.sample((DRAWS,)).flatten()
    k = (draws * 255).round()
    assert torch.equal(draws, k / 255) and k.min() >= 0 and k.max() <= 255  # values k/255
    counts = torch.bincount(k.long(), minlength=256)
    masses = d.log_prob(_every_level((1, 1, 1), torch.float32).squeeze(1)).exp()
    assert abs(masses.sum() - 1) < 1e-5
    assert _chi_square_p(counts, masses * DRAWS) > 1e-4


@pytest.mark.parametrize("name", ["dlogistic", "categorical"])
def test_samples_follow_the_masses_three_channels(name):
    pyro.set_rng_seed(7)
    lik, out = _one_pixel_out(name, 3, seed=8)
    d = lik(out)
    draws = (d.sample((DRAWS,)).reshape(DRAWS, 3) * 255).round().long()
    masses = d.base_dist.log_prob(_every_level((3, 1, 1), torch.float32).squeeze(1)).exp().reshape(256, 3)
    for c in range(3):
        assert _chi_square_p(torch.bincount(draws[:, c], minlength=256), masses[:, c] * DRAWS) > 1e-4, c


def test_dmol_samples_follow_the_masses_three_channels():
    """Red's and green's marginals (green's summed exactly over red's 256 levels), and blue given a
    red and green set by each component (tiny scales), where blue's location moves with both."""
    pyro.set_rng_seed(9)
    lik, out = _one_pixel_out("dmol", 3, seed=10)
    d = lik(out)
    draws = (d.sample((DRAWS,)).reshape(DRAWS, 3) * 255).round().long()
    weights = torch.softmax(out[:3].double(), 0)
    grid = torch.zeros(256, 256, 3)  # (red, green, blue = 0)
    grid[..., 0] = LEVELS.float().reshape(256, 1) / 255
    grid[..., 1] = LEVELS.float().reshape(1, 256) / 255
    # (256, 256, 3, K): each component's conditional masses of red and green (blue's unused)
    per_channel = d.channel_log_probs(grid.reshape(256, 256, 3, 1, 1)).double().squeeze(-3).squeeze(-3)
    red = (weights * per_channel[:, 0, 0].exp()).sum(-1)
    green = (weights * (per_channel[..., 0, :] + per_channel[..., 1, :]).exp()).sum((0, -1))
    assert abs(red.sum() - 1) < 1e-5 and abs(green.sum() - 1) < 1e-5
    assert _chi_square_p(torch.bincount(draws[:, 0], minlength=256), red * DRAWS) > 1e-4
    assert _chi_square_p(torch.bincount(draws[:, 1], minlength=256), green * DRAWS) > 1e-4

    # blue: red and green of component j pinned at levels (40 j + 20, 200 - 50 j) by tiny scales,
    # blue's location moved by both through the coefficients c_br, c_bg (green's by red, c_gr)
    k = 3
    red, green = 40 * torch.arange(3.0) + 20, 200 - 50 * torch.arange(3.0)
    c_gr = torch.tanh(torch.tensor(0.5))
    loc, log_scale, coeffs = slice(k, 4 * k), slice(4 * k, 7 * k), slice(7 * k, 10 * k)
    pinned = out.clone()
    pinned[loc][:2 * k] = torch.cat([red / 255, (green - c_gr * red) / 255])
    pinned[log_scale][:2 * k] = -20.0  # clamped to -12: a thousandth of a level
    pinned[log_scale][2 * k:] = -3.5
    pinned[coeffs] = torch.cat([torch.full((3,), 0.5), torch.tensor([1.0, -0.5, 0.3]), torch.tensor([-0.7, 0.9, 0.2])])
    d = lik(pinned)
    draws = (d.sample((DRAWS,)).reshape(DRAWS, 3) * 255).round().long()
    cells = torch.stack([torch.tensor([40 * j + 20, 200 - 50 * j]) for j in range(3)])  # (K, 2)
    hit = (draws[:, None, :2] == cells[None]).all(-1)  # (DRAWS, K)
    assert hit.any(-1).all(), "red and green not where the components pin them"
    which = hit.float().argmax(-1)
    values = torch.zeros(3, 256, 3)
    values[..., :2] = cells.float()[:, None, :] / 255
    values[..., 2] = LEVELS.float() / 255
    expected = d.log_prob(values.reshape(3, 256, 3, 1, 1)).double().exp()  # (K, 256): joint masses of the cells
    assert abs(expected.sum() - 1) < 1e-4
    observed = torch.bincount(which * 256 + draws[:, 2], minlength=3 * 256)
    assert _chi_square_p(observed, expected.flatten() * DRAWS) > 1e-4


def test_a_wrong_sampler_fails_the_chi_square():
    """The test's power: draws shifted by one level (floor instead of round) are rejected."""
    pyro.set_rng_seed(11)
    lik, out = _one_pixel_out("dlogistic", 1, seed=6)
    d = lik(out)
    k = (d.sample((DRAWS,)).flatten() * 255).round().long()
    masses = d.log_prob(_every_level((1, 1, 1), torch.float32).squeeze(1)).exp()
    assert _chi_square_p(torch.bincount((k + 1).clamp(max=255), minlength=256), masses * DRAWS) < 1e-4


# --- means ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,obs_shape", [("dlogistic", (3, 2, 2)), ("categorical", (3, 2, 2)), ("dmol", (1, 2, 2))])
def test_mean_is_the_expected_level(name, obs_shape):
    """mean(out) = sum_k (k/255) P(k), with P(k) from log_prob (extreme parameters included)."""
    lik = _build(name, obs_shape, 3)
    out = _decoder_out(lik, obs_shape, batch=(3,), dtype=torch.float64)
    if name == "dmol":
        log_p = torch.stack([build("dmol", (1,), mixtures=3)(out.reshape(3, -1, 4)[..., i]).log_prob(
            _every_level((1,), torch.float64)) for i in range(4)], -1)  # (256, 3, 4 pixels)
        log_p = log_p.reshape((256, 3) + obs_shape)
    else:
        log_p = lik(out).base_dist.log_prob(_every_level(obs_shape, torch.float64))
    expected = (log_p.exp() * (LEVELS / 255).reshape((256, 1) + (1,) * len(obs_shape))).sum(0)
    mean = lik.mean(out)
    assert mean.shape == (3,) + obs_shape
    torch.testing.assert_close(mean, expected, rtol=0, atol=1e-10)


def test_dmol_mean_three_channels():
    """Red's mean exact; green and blue exact when the coefficients are 0 (tanh(0)); with them, a
    plug-in approximation inside [0, 1]."""
    obs_shape, k = (3, 1, 2), 3
    lik = build("dmol", obs_shape, mixtures=k)
    out = _decoder_out(lik, obs_shape, batch=(2,), dtype=torch.float64).reshape(2, -1, 2)
    coupled = lik.mean(out.flatten(-2))
    assert ((coupled >= 0) & (coupled <= 1)).all()
    out[:, 7 * k:] = 0.0
    mean = lik.mean(out.flatten(-2))
    one_channel = build("dmol", (1,), mixtures=k)
    for c in range(3):
        loc, log_scale = out[:, k + c * k:k + (c + 1) * k], out[:, 4 * k + c * k:4 * k + (c + 1) * k]
        params = torch.cat([out[:, :k], loc, log_scale], 1)
        for i in range(2):
            log_p = one_channel(params[..., i]).log_prob(_every_level((1,), torch.float64))  # (256, 2)
            expected = (log_p.exp() * (LEVELS / 255).reshape(256, 1)).sum(0)
            torch.testing.assert_close(mean[:, c, 0, i], expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(coupled[:, 0], mean[:, 0])  # red does not depend on the coefficients


# --- shapes, Pyro, validation --------------------------------------------------------------------

@pytest.mark.parametrize("name", EIGHT_BIT + ("bernoulli", "gaussian"))
@pytest.mark.parametrize("obs_shape", [(3, 4, 2), (1, 4, 2), (4, 2), (12,)])
def test_leading_dims_expand_and_a_pyro_plate(name, obs_shape):
    lik = _build(name, obs_shape, 2)
    n, particles, labels = 5, 3, 2
    d_out = lik.out_channels(_channels(obs_shape)) * _locations(obs_shape)
    out = torch.randn(labels, 1, particles, n, d_out)  # an enumerated label, particles, data
    d = lik(out)
    assert d.batch_shape == (labels, 1, particles, n) and d.event_shape == obs_shape
    assert d.has_rsample is (name == "gaussian")
    x = lik(out[0, 0, 0]).sample()
    assert x.shape == (n,) + obs_shape
    log_p = d.log_prob(x)
    assert log_p.shape == (labels, 1, particles, n) and torch.isfinite(log_p).all()
    assert d.sample((4,)).shape == (4, labels, 1, particles, n) + obs_shape
    assert lik.mean(out).shape == (labels, 1, particles, n) + obs_shape
    # expand: new leading dims and broadcast singleton ones, the same scores
    wide = d.expand((7, labels, 6, particles, n))
    assert wide.batch_shape == (7, labels, 6, particles, n) and wide.event_shape == obs_shape
    torch.testing.assert_close(wide.log_prob(x), log_p.expand(7, labels, 6, particles, n))
    assert wide.sample().shape == (7, labels, 6, particles, n) + obs_shape

    def model(out, x):
        with pyro.plate("data", n):
            pyro.sample("x", lik(out), obs=x)
            pyro.sample("x_new", lik(out))

    trace = pyro.poutine.trace(model).get_trace(out[0, 0, 0], x)
    trace.compute_log_prob()
    site = trace.nodes["x"]
    assert site["fn"].batch_shape == (n,) and site["log_prob"].shape == (n,)
    torch.testing.assert_close(site["log_prob_sum"], lik(out[0, 0, 0]).log_prob(x).sum())
    drawn = trace.nodes["x_new"]["value"]
    assert drawn.shape == (n,) + obs_shape
    if LIKELIHOODS[name].levels == 256:
        assert torch.equal(drawn, (drawn * 255).round() / 255) and drawn.min() >= 0 and drawn.max() <= 1


def test_existing_likelihoods_unchanged():
    out = torch.randn(4, 2 * 6)
    bern = build("bernoulli", (6,))(out[:, :6])
    x = (torch.rand(4, 6) < 0.5).float()
    torch.testing.assert_close(bern.log_prob(x), dist.Bernoulli(logits=out[:, :6]).to_event(1).log_prob(x))
    gauss = build("gaussian", (6,), 0.05)(out)
    expected = dist.Normal(out[:, :6], 0.05 + torch.nn.functional.softplus(out[:, 6:])).to_event(1)
    torch.testing.assert_close(gauss.log_prob(x), expected.log_prob(x))


@pytest.mark.parametrize("name", EIGHT_BIT)
@pytest.mark.parametrize("bad", [1.5, -1 / 255, 0.5, 3.3 / 255, float("nan")])
def test_values_off_the_8_bit_grid_are_refused(name, bad):
    obs_shape = (3, 2, 2)
    lik = _build(name, obs_shape, 2)
    d = lik(torch.randn(2, lik.out_channels(3) * 4))
    x = torch.randint(256, (2,) + obs_shape).float() / 255
    assert torch.isfinite(d.log_prob(x)).all()
    x[1, 2, 1, 0] = bad
    with pytest.raises(ValueError, match=r"support.*EightBit"):
        d.log_prob(x)
    with pytest.raises(ValueError, match="support"):
        d.expand((3, 2)).log_prob(x)
    with pyro.validation_enabled(False):
        d = lik(torch.randn(2, lik.out_channels(3) * 4))  # built without validation: scores the nearest level
        assert d.log_prob(x).shape == (2,)


@pytest.mark.parametrize("name,obs_shape", [("dlogistic", (1, 4, 4)), ("dmol", (3, 4, 4)), ("categorical", (12,))])
def test_a_vae_trains_on_8_bit_data(name, obs_shape):
    """Through ``run.build`` (likelihood options passed on) and a vectorized-particle ELBO: a
    finite loss in nats, finite gradients everywhere."""
    from pyro_vae import objectives
    from pyro_vae.config import RunConfig
    from pyro_vae.run import build as build_run

    options = {"mixtures": 2} if name == "dmol" else {}
    config = RunConfig(likelihood=name, likelihood_options=options, hidden=[8], latent_dim=2, objective="elbo",
                       particles=3)
    pair = build_run(config, obs_shape)
    assert getattr(pair.model.likelihood, "mixtures", 2) == 2
    x = torch.randint(256, (6,) + obs_shape, generator=torch.Generator().manual_seed(14)).float() / 255
    loss = objectives.loss_fn("elbo", pair.model, pair.guide, 3)(x, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(torch.isfinite(p.grad).all() for p in pair.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", list(LIKELIHOODS))
@pytest.mark.parametrize("obs_shape", [(6,), (3, 2, 2)])
def test_scoring_from_decoder_output_equals_the_distribution(name, obs_shape):
    # Likelihood.log_prob(out, x) is what the direct bounds and the evaluation call; the Bernoulli
    # one skips building the distribution when unvalidated, and must not change a digit or a gradient
    likelihood = build(name, obs_shape)
    levels = LIKELIHOODS[name].levels
    channels = obs_shape[0] if len(obs_shape) == 3 else 1
    width = likelihood.out_channels(channels) * math.prod(obs_shape) // channels
    x = torch.randint(0, levels or 2, (5,) + obs_shape).double() / max((levels or 2) - 1, 1)
    out = torch.randn(3, 5, width, dtype=torch.float64, requires_grad=True)  # 3 particles of 5 images
    expected = likelihood(out).log_prob(x)
    (g_expected,) = torch.autograd.grad(expected.sum(), out)
    for validate in (True, False):
        with pyro.validation_enabled(validate):
            got = likelihood.log_prob(out, x)
        (g_got,) = torch.autograd.grad(got.sum(), out)
        assert got.shape == (3, 5)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        torch.testing.assert_close(g_got, g_expected, rtol=0, atol=0)
