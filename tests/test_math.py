"""The paper's formulas, checked against independent float64 derivations, closed forms and Monte Carlo."""

import math

import numpy as np
import pytest
import torch

from hf_ddpm import DDPMScheduler
from hf_ddpm.gaussian import approx_standard_normal_cdf, discretized_gaussian_log_likelihood, normal_kl

T = 1000


def linear_tables():
    betas = np.linspace(1e-4, 0.02, T)
    alphas = 1 - betas
    abar = np.array([np.prod(alphas[: t + 1]) for t in range(T)])  # no cumprod: an independent computation
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    return betas, alphas, abar, abar_prev


def scheduler64(**kwargs):
    return DDPMScheduler(num_train_timesteps=T, **kwargs)


def test_tables_are_float64_and_match_independent_products():
    betas, _, abar, abar_prev = linear_tables()
    tables = scheduler64().diffusion.tables
    assert all(v.dtype == torch.float64 for v in tables.values())
    np.testing.assert_allclose(tables["alphas_cumprod"].numpy(), abar, rtol=1e-12)
    np.testing.assert_allclose(tables["alphas_cumprod_prev"].numpy(), abar_prev, rtol=1e-12)
    np.testing.assert_allclose(
        tables["posterior_variance"].numpy(), betas * (1 - abar_prev) / (1 - abar), rtol=1e-10, atol=0
    )
    # a float32 cumulative product is visibly worse: the reason the tables are float64
    abar32 = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T), 0).double().numpy()
    assert np.max(np.abs(abar32 / abar - 1)) > 1e-7


def test_q_mean_variance_closed_form():
    _, _, abar, _ = linear_tables()
    x0 = torch.rand(4, 3, 5, 5, dtype=torch.float64) * 2 - 1
    t = torch.tensor([0, 10, 500, 999])
    mean, var, log_var = scheduler64().q_mean_variance(x0, t)
    for i, ti in enumerate(t.tolist()):
        np.testing.assert_allclose(mean[i].numpy(), math.sqrt(abar[ti]) * x0[i].numpy(), rtol=1e-12)
        np.testing.assert_allclose(var[i].numpy(), 1 - abar[ti], rtol=1e-10)
        np.testing.assert_allclose(log_var[i].numpy(), math.log(1 - abar[ti]), rtol=1e-10)


def test_posterior_matches_bayes_rule_in_float64():
    """mu~ and beta~ (eqs. 6-7) equal the product of q(x_t | x_{t-1}) and q(x_{t-1} | x_0), derived directly."""
    betas, alphas, abar, abar_prev = linear_tables()
    x0 = torch.rand(3, 2, 4, 4, dtype=torch.float64) * 2 - 1
    x_t = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([1, 37, 999])
    mean, var, log_var = scheduler64().q_posterior_mean_variance(x0, x_t, t)
    for i, ti in enumerate(t.tolist()):
        precision = 1 / (1 - abar_prev[ti]) + alphas[ti] / betas[ti]
        bayes_var = 1 / precision
        bayes_mean = bayes_var * (
            math.sqrt(abar_prev[ti]) * x0[i].numpy() / (1 - abar_prev[ti]) + math.sqrt(alphas[ti]) * x_t[i].numpy() / betas[ti]
        )
        np.testing.assert_allclose(var[i].numpy(), bayes_var, rtol=1e-9)
        np.testing.assert_allclose(mean[i].numpy(), bayes_mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(log_var[i].numpy(), math.log(bayes_var), rtol=1e-9)


def test_posterior_at_t0_returns_x0_and_clipped_log_variance():
    sched = scheduler64()
    x0, x_t = torch.rand(2, 1, 3, 3, dtype=torch.float64), torch.randn(2, 1, 3, 3, dtype=torch.float64)
    mean, var, log_var = sched.q_posterior_mean_variance(x0, x_t, 0)
    torch.testing.assert_close(mean, x0)
    assert torch.all(var == 0)
    posterior_variance = sched.diffusion.tables["posterior_variance"]
    assert torch.allclose(log_var, torch.log(posterior_variance[1]).expand_as(log_var))


def test_q_sample_monte_carlo():
    sched = DDPMScheduler()
    n, t = 200_000, 300
    x0 = torch.full((n, 1, 1, 1), 0.7)
    x_t = sched.q_sample(x0, torch.full((n,), t), torch.randn(n, 1, 1, 1))
    abar = float(sched.diffusion.tables["alphas_cumprod"][t])
    assert x_t.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=0.01)
    assert x_t.var().item() == pytest.approx(1 - abar, rel=0.01)


def test_posterior_monte_carlo_regression():
    """Sample x_{t-1} ~ q(. | x_0), then x_t ~ q(x_t | x_{t-1}); regressing x_{t-1} on x_t recovers eqs. 6-7."""
    sched = DDPMScheduler()
    tables = sched.diffusion.tables
    n, t, x0 = 400_000, 50, 0.5
    abar_prev, beta = float(tables["alphas_cumprod"][t - 1]), float(tables["betas"][t])
    gen = torch.Generator().manual_seed(0)
    x_prev = math.sqrt(abar_prev) * x0 + math.sqrt(1 - abar_prev) * torch.randn(n, generator=gen, dtype=torch.float64)
    x_t = math.sqrt(1 - beta) * x_prev + math.sqrt(beta) * torch.randn(n, generator=gen, dtype=torch.float64)
    slope, intercept = np.polyfit(x_t.numpy(), x_prev.numpy(), 1)
    residual_var = np.var(x_prev.numpy() - (slope * x_t.numpy() + intercept))
    assert slope == pytest.approx(float(tables["posterior_mean_coef2"][t]), rel=0.01)
    assert intercept == pytest.approx(float(tables["posterior_mean_coef1"][t]) * x0, rel=0.02)
    assert residual_var == pytest.approx(float(tables["posterior_variance"][t]), rel=0.01)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_predict_x0_inverts_forward_process(prediction_type):
    sched = scheduler64(prediction_type=prediction_type)
    x0 = torch.rand(5, 3, 4, 4, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 100, 700, 998])
    x_t = sched.q_sample(x0, t, noise)
    target = {"epsilon": noise, "sample": x0, "v_prediction": sched.diffusion.velocity(x0, t, noise)}[prediction_type]
    torch.testing.assert_close(sched.predict_x0(target, x_t, t), x0, rtol=1e-9, atol=1e-9)
    if prediction_type == "v_prediction":  # and matches diffusers' own get_velocity
        torch.testing.assert_close(sched.get_velocity(x0.float(), noise.float(), t), target.float(), atol=1e-5, rtol=1e-5)


def test_p_mean_variance_variance_choices_and_t0_conventions():
    betas, _, abar, abar_prev = linear_tables()
    posterior_variance = betas * (1 - abar_prev) / (1 - abar)
    x_t = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 500])
    eps = torch.randn_like(x_t)
    small = scheduler64(variance_type="fixed_small").p_mean_variance(eps, x_t, t)
    large = scheduler64(variance_type="fixed_large").p_mean_variance(eps, x_t, t)
    assert small["variance"][0].max() == 0 and small["log_variance"][0].max() == pytest.approx(math.log(posterior_variance[1]))
    assert small["variance"][1].max() == pytest.approx(posterior_variance[500], rel=1e-10)
    assert large["variance"][1].max() == pytest.approx(betas[500], rel=1e-10)
    assert large["log_variance"][0].max() == pytest.approx(math.log(posterior_variance[1]), rel=1e-10)  # beta~_1 at t=0
    assert large["log_variance"][1].max() == pytest.approx(math.log(betas[500]), rel=1e-10)
    torch.testing.assert_close(small["mean"], large["mean"])
    # learned_range: v = +1 gives log beta_t, v = -1 gives the clipped log beta~_t, v = 0 the midpoint
    learned_range = scheduler64(variance_type="learned_range")
    for v, expected in ((1.0, math.log(betas[500])), (-1.0, math.log(posterior_variance[500])),
                        (0.0, 0.5 * (math.log(betas[500]) + math.log(posterior_variance[500])))):
        out = learned_range.p_mean_variance(torch.cat([eps, torch.full_like(eps, v)], 1), x_t, t)
        assert out["log_variance"][1].max() == pytest.approx(expected, rel=1e-10)
        torch.testing.assert_close(out["mean"], small["mean"])
    # learned: the extra channels ARE the log-variance (Improved DDPM), not a variance
    out = scheduler64(variance_type="learned").p_mean_variance(torch.cat([eps, torch.full_like(eps, -3.0)], 1), x_t, t)
    assert torch.all(out["log_variance"] == -3.0) and torch.allclose(out["variance"], torch.exp(torch.tensor(-3.0, dtype=torch.float64)))


def test_p_mean_is_posterior_mean_of_clipped_x0():
    sched = scheduler64()
    x_t = 3 * torch.randn(4, 1, 3, 3, dtype=torch.float64)
    eps = torch.randn_like(x_t)
    t = torch.full((4,), 5)
    clipped = sched.p_mean_variance(eps, x_t, t, clip_denoised=True)
    unclipped = sched.p_mean_variance(eps, x_t, t, clip_denoised=False)
    assert clipped["pred_x0"].abs().max() <= 1 and unclipped["pred_x0"].abs().max() > 1
    expected, _, _ = sched.q_posterior_mean_variance(unclipped["pred_x0"].clamp(-1, 1), x_t, t)
    torch.testing.assert_close(clipped["mean"], expected)
    # without clipping, mu~(x0_hat, x_t) equals Algorithm 2's eps form 1/sqrt(alpha) (x_t - beta/sqrt(1-abar) eps)
    betas, alphas, abar, _ = linear_tables()
    eps_form = (x_t - betas[5] / math.sqrt(1 - abar[5]) * eps) / math.sqrt(alphas[5])
    torch.testing.assert_close(unclipped["mean"], eps_form, rtol=1e-9, atol=1e-9)


def test_normal_kl_matches_torch_distributions():
    m1, m2 = torch.randn(100, dtype=torch.float64), torch.randn(100, dtype=torch.float64)
    lv1, lv2 = torch.randn(100, dtype=torch.float64), torch.randn(100, dtype=torch.float64)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, torch.exp(0.5 * lv1)), torch.distributions.Normal(m2, torch.exp(0.5 * lv2))
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected)


def test_approx_cdf_is_close_to_erf():
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    exact = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    assert (approx_standard_normal_cdf(x) - exact).abs().max() < 2e-4


def test_discretized_decoder_is_a_distribution_over_256_values():
    values = torch.arange(256, dtype=torch.float64) * 2 / 255 - 1
    for mean, log_scale in ((0.0, math.log(0.01)), (0.9, math.log(0.3)), (-1.2, math.log(1e-3))):
        log_p = discretized_gaussian_log_likelihood(values, torch.full_like(values, mean), torch.full_like(values, log_scale))
        assert torch.exp(log_p).sum().item() == pytest.approx(1.0, abs=1e-9)


def test_prior_bpd_near_zero_for_linear_schedule():
    x0 = torch.rand(8, 3, 4, 4, dtype=torch.float64) * 2 - 1
    prior = scheduler64().prior_bpd(x0)
    assert prior.shape == (8,)
    assert torch.all(prior > 0) and torch.all(prior < 1e-4)  # ~1e-5 bits/dim, as the paper's Table 2 implies
    # closed form for x0 = 0: KL(N(0, 1 - abar) || N(0, 1)) = 0.5 (-log(1 - abar) - abar)
    _, _, abar, _ = linear_tables()
    expected = 0.5 * (-math.log(1 - abar[-1]) - abar[-1]) / math.log(2)
    assert scheduler64().prior_bpd(torch.zeros(1, 1, 2, 2, dtype=torch.float64)).item() == pytest.approx(expected, rel=1e-6)


def test_bits_per_dim_known_answer_for_an_oracle_model():
    """A model that predicts the true eps makes every KL term zero (fixed_small matches the posterior exactly),
    and the t = 0 term is the Gaussian mass of each pixel's bin with sigma^2 = beta~_1 around the pixel itself."""
    sched = scheduler64(variance_type="fixed_small")
    x0 = (torch.randint(0, 256, (2, 3, 4, 4)).double() * 2 / 255 - 1)
    x0[0, 0, 0, :2] = torch.tensor([-1.0, 1.0])  # include both edge bins
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 0])
    for ts in (torch.tensor([1, 2]), torch.tensor([500, 999])):
        x_t = sched.q_sample(x0, ts, noise)
        assert sched.vb_terms_bpd(noise, x0, x_t, ts)["output"].abs().max() < 1e-9
    x_t = sched.q_sample(x0, t, noise)
    nll = sched.vb_terms_bpd(noise, x0, x_t, t)["output"]
    sigma = math.sqrt(float(sched.diffusion.tables["posterior_variance"][1]))
    interior = math.erf((1 / 255) / (sigma * math.sqrt(2)))  # mass of [x - 1/255, x + 1/255] around the mean x
    edge = 0.5 * (1 + math.erf((1 / 255) / (sigma * math.sqrt(2))))  # (-inf, x + 1/255] at x = -1, likewise at 1
    for i in range(2):
        is_edge = (x0[i].abs() > 0.999).double()
        expected = -(is_edge * math.log(edge) + (1 - is_edge) * math.log(interior)).mean() / math.log(2)
        assert nll[i].item() == pytest.approx(expected.item(), rel=2e-3)


def test_vb_terms_batched_over_t_equal_per_timestep_calls():
    sched = scheduler64(variance_type="fixed_large")
    x0 = torch.rand(4, 3, 4, 4, dtype=torch.float64) * 2 - 1
    noise, model_output = torch.randn_like(x0), torch.randn_like(x0)
    t = torch.tensor([0, 3, 400, 999])
    x_t = sched.q_sample(x0, t, noise)
    batched = sched.vb_terms_bpd(model_output, x0, x_t, t)["output"]
    for i, ti in enumerate(t.tolist()):
        single = sched.vb_terms_bpd(model_output[i : i + 1], x0[i : i + 1], x_t[i : i + 1], ti)["output"]
        torch.testing.assert_close(batched[i : i + 1], single)


def test_training_losses_simple_kl_hybrid():
    sched = DDPMScheduler(variance_type="learned_range")
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 500, 999])
    x_t = sched.q_sample(x0, t, noise)
    eps_hat = (noise + 0.1 * torch.randn_like(noise)).requires_grad_()
    var_values = torch.zeros_like(noise).requires_grad_()
    output = torch.cat([eps_hat, var_values], 1)
    simple = sched.training_losses(output, x0, x_t, noise, t, "simple")
    torch.testing.assert_close(simple["loss"], ((noise - eps_hat) ** 2).mean(dim=(1, 2, 3)))
    hybrid = sched.training_losses(output, x0, x_t, noise, t, "hybrid")
    vb = sched.vb_terms_bpd(output, x0, x_t, t, clip_denoised=False)["output"]
    torch.testing.assert_close(hybrid["vb"], vb * (1000 * 0.001))
    torch.testing.assert_close(hybrid["loss"], simple["loss"] + hybrid["vb"])
    # stop-gradient: the bound term reaches the variance channels only
    grad_eps, grad_var = torch.autograd.grad(hybrid["vb"].sum(), [eps_hat, var_values], allow_unused=True)
    assert grad_eps is None or grad_eps.abs().max() == 0
    assert grad_var.abs().max() > 0
    kl = sched.training_losses(output, x0, x_t, noise, t, "kl")
    grad_eps, _ = torch.autograd.grad(kl["loss"].sum(), [eps_hat, var_values])
    assert grad_eps.abs().max() > 0  # the true bound trains the mean too
    torch.testing.assert_close(kl["loss"], vb)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_loss_weightings_are_min_snr_and_p2_on_the_eps_scale(prediction_type):
    sched = DDPMScheduler(prediction_type=prediction_type)
    x0 = torch.rand(3, 1, 4, 4, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 200, 900])
    x_t = sched.q_sample(x0, t, noise)
    target = sched.diffusion.training_target(x0, noise, t)
    output = target + 0.1 * torch.randn_like(target)
    # the implied eps error: the weightings are defined on it
    eps_from = lambda out: (x_t - sched.diffusion.coef("sqrt_alphas_cumprod", t, x_t) * sched.diffusion.predict_x0(out, x_t, t)) / sched.diffusion.coef("sqrt_one_minus_alphas_cumprod", t, x_t)  # noqa: E731
    eps_mse = ((eps_from(output) - noise) ** 2).mean(dim=(1, 2, 3))
    snr = sched.diffusion.tables["snr"][t]
    min_snr = sched.training_losses(output, x0, x_t, noise, t, "simple", "min_snr", snr_gamma=5.0)["loss"]
    torch.testing.assert_close(min_snr, eps_mse * torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / snr)
    p2 = sched.training_losses(output, x0, x_t, noise, t, "simple", "p2", p2_k=1.0, p2_gamma=0.5)["loss"]
    torch.testing.assert_close(p2, eps_mse * (1.0 + snr) ** -0.5)
