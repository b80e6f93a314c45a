"""hf_ddpm.DDPMScheduler is a drop-in for stock diffusers' DDPMScheduler, with stock's bugs fixed."""

import inspect
import json

import diffusers
import pytest
import torch

from hf_ddpm import DDPMScheduler

STOCK_CONFIGS = [
    {},
    {"variance_type": "fixed_large"},
    {"variance_type": "fixed_small_log"},
    {"variance_type": "learned_range"},
    {"prediction_type": "v_prediction", "beta_schedule": "squaredcos_cap_v2"},
    {"prediction_type": "sample", "clip_sample": False},
    {"beta_schedule": "scaled_linear", "thresholding": True, "sample_max_value": 1.5},
    {"timestep_spacing": "linspace", "num_train_timesteps": 200},
    {"timestep_spacing": "trailing", "beta_schedule": "sigmoid"},
    {"steps_offset": 1, "clip_sample_range": 0.5},
    {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
]


def run_chain(scheduler, num_inference_steps, learned, seed=0):
    scheduler.set_timesteps(num_inference_steps)
    gen = torch.Generator().manual_seed(seed)
    outputs = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(2, 3, 4, 4, generator=gen)
    for t in scheduler.timesteps:
        model_output = 0.5 * torch.randn(2, 6 if learned else 3, 4, 4, generator=outputs)
        if learned:
            model_output[:, 3:] = model_output[:, 3:].clamp(-1, 1)
        x = scheduler.step(model_output, t, x, generator=gen).prev_sample
    return x


def test_init_signature_is_stocks():
    ours = inspect.signature(DDPMScheduler.__init__).parameters
    stock = inspect.signature(diffusers.DDPMScheduler.__init__).parameters
    assert list(ours) == list(stock)
    assert {k: v.default for k, v in ours.items()} == {k: v.default for k, v in stock.items()}


@pytest.mark.parametrize("config", STOCK_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("num_inference_steps", [None, 25])
def test_step_matches_stock(config, num_inference_steps):
    ours, stock = DDPMScheduler(**config), diffusers.DDPMScheduler(**config)
    steps = num_inference_steps or ours.config.num_train_timesteps
    learned = config.get("variance_type") == "learned_range"
    if config.get("steps_offset") and num_inference_steps is None:
        # all T steps shifted by the offset reach t = T, where stock fails later with an IndexError in step()
        with pytest.raises(ValueError, match="check steps_offset"):
            ours.set_timesteps(steps)
        return
    ours.set_timesteps(steps)
    stock.set_timesteps(steps)
    assert torch.equal(ours.timesteps, stock.timesteps)
    if config.get("rescale_betas_zero_snr") or config.get("timestep_spacing") == "trailing":
        # chains that stop above t = 0: stock adds noise at the last step, hf_ddpm returns the mean; compare the
        # step-by-step outputs before it instead
        ours.set_timesteps(timesteps=ours.timesteps[:-1].tolist())
        stock.set_timesteps(timesteps=stock.timesteps[:-1].tolist())
    # Each step starts both schedulers from stock's sample, so table rounding is compared per step instead of
    # compounding through hundreds of random, non-contracting model outputs. Stock's float32 tables lose ~1e-3
    # relative in 1 - abar_t at small t (cancellation), which bounds how close the two can be.
    gen_a, gen_b = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4)
    for t in stock.timesteps:
        model_output = 0.5 * torch.randn(2, 6 if learned else 3, 4, 4)
        if learned:
            model_output[:, 3:] = model_output[:, 3:].clamp(-1, 1)
        out_a = ours.step(model_output, t, x, generator=gen_a)
        out_b = stock.step(model_output, t, x, generator=gen_b)
        torch.testing.assert_close(out_a.pred_original_sample, out_b.pred_original_sample, atol=5e-4, rtol=1e-3)
        torch.testing.assert_close(out_a.prev_sample, out_b.prev_sample, atol=5e-4, rtol=1e-3)
        x = out_b.prev_sample


@pytest.mark.parametrize("config", STOCK_CONFIGS[:6])
def test_add_noise_and_velocity_match_stock(config):
    ours, stock = DDPMScheduler(**config), diffusers.DDPMScheduler(**config)
    x0, noise = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    t = torch.tensor([0, 1, 250, 998, 999])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), stock.add_noise(x0, noise, t), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.get_velocity(x0, noise, t), stock.get_velocity(x0, noise, t), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.q_sample(x0, t, noise), stock.add_noise(x0, noise, t), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.alphas_cumprod, stock.alphas_cumprod, atol=1e-6, rtol=1e-5)


def test_fixed_large_log_is_fixed_large_not_nan():
    stock = run_chain(diffusers.DDPMScheduler(variance_type="fixed_large_log"), 20, False)
    assert torch.isnan(stock).any()  # the stock bug this fixes
    ours = run_chain(DDPMScheduler(variance_type="fixed_large_log"), 20, False)
    assert not torch.isnan(ours).any()
    torch.testing.assert_close(ours, run_chain(DDPMScheduler(variance_type="fixed_large"), 20, False))


def test_get_variance_returns_variances():
    for variance_type, table in (("fixed_small_log", "posterior_variance"), ("fixed_large_log", "betas")):
        sched = DDPMScheduler(variance_type=variance_type)
        expected = sched.diffusion.tables[table][500].float()
        assert torch.allclose(sched._get_variance(500), expected)


def test_batched_timesteps_equal_scalar_steps():
    sched = DDPMScheduler(variance_type="fixed_large")
    sched.set_timesteps(50)
    x, eps, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([980, 500, 0])
    batched = sched.step(eps, t, x, variance_noise=noise)
    for i, ti in enumerate(t.tolist()):
        single = sched.step(eps[i : i + 1], ti, x[i : i + 1], variance_noise=noise[i : i + 1])
        torch.testing.assert_close(batched.prev_sample[i : i + 1], single.prev_sample)
        torch.testing.assert_close(batched.pred_original_sample[i : i + 1], single.pred_original_sample)
    # t = 0 gets no noise: the output is the posterior mean, i.e. the clipped x0 prediction itself
    torch.testing.assert_close(batched.prev_sample[2], batched.pred_original_sample[2])


def test_respacing_uses_improved_ddpm_betas():
    sched = DDPMScheduler(timestep_spacing="linspace", variance_type="fixed_large")
    sched.set_timesteps(10)
    abar = sched.diffusion.tables["alphas_cumprod"]
    kept = sorted(sched.timesteps.tolist())
    assert kept == torch.linspace(0, 999, 10).round().long().tolist()  # Improved DDPM's even spacing
    expected = [1 - abar[kept[0]].item()] + [1 - (abar[b] / abar[a]).item() for a, b in zip(kept, kept[1:])]
    torch.testing.assert_close(sched._sampling_diffusion.tables["betas"], torch.tensor(expected, dtype=torch.float64))
    # a step from t = 999 (sampling position 9) uses the respaced beta as the fixed_large variance
    x, eps, noise = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    out = sched.step(eps, 999, x, variance_noise=noise, clip_sample=False)
    mean = sched._sampling_diffusion.p_mean_variance(eps, x, 9)["mean"]
    torch.testing.assert_close(out.prev_sample - mean, torch.full_like(x, expected[-1] ** 0.5))


def test_paper_schedules_save_as_stock_loadable_configs(tmp_path):
    for name in ("quad", "const", "jsd", "warmup10", "warmup50", "cosine"):
        ours = DDPMScheduler(beta_schedule=name)
        ours.save_pretrained(tmp_path / name)
        config = json.loads((tmp_path / name / "scheduler_config.json").read_text())
        assert config["_class_name"] == "DDPMScheduler" and config["beta_schedule"] == name
        assert set(config) - {"_class_name", "_diffusers_version"} == set(inspect.signature(diffusers.DDPMScheduler.__init__).parameters) - {"self"}
        stock = diffusers.DDPMScheduler.from_pretrained(tmp_path / name)
        torch.testing.assert_close(stock.betas, ours.betas)
        reloaded = DDPMScheduler.from_pretrained(tmp_path / name)
        assert torch.equal(reloaded.diffusion.tables["alphas_cumprod"], ours.diffusion.tables["alphas_cumprod"])


def test_learned_variance_interpreted_as_log_variance():
    sched = DDPMScheduler(variance_type="learned")
    sched.set_timesteps(1000)
    x, eps, noise = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    out = sched.step(torch.cat([eps, torch.full_like(eps, -4.0)], 1), 500, x, variance_noise=noise)
    mean = sched.p_mean_variance(torch.cat([eps, eps], 1), x, 500)["mean"]
    torch.testing.assert_close(out.prev_sample - mean, torch.full_like(x, torch.exp(torch.tensor(-2.0)).item()))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: DDPMScheduler(beta_schedule="cosin"), "Unknown beta_schedule 'cosin'"),
        (lambda: DDPMScheduler(variance_type="fixed"), "Unknown variance_type 'fixed'"),
        (lambda: DDPMScheduler(prediction_type="eps"), "Unknown prediction_type 'eps'"),
        (lambda: DDPMScheduler(timestep_spacing="even"), "Unknown timestep_spacing 'even'"),
        (lambda: DDPMScheduler(num_train_timesteps=0), "num_train_timesteps must be an integer >= 1"),
        (lambda: DDPMScheduler(beta_end=1.5), r"outside \(0, 1\]"),
        (lambda: DDPMScheduler(beta_start=0.0), r"beta\[0\] = 0.0 is outside"),
        (lambda: DDPMScheduler(trained_betas=[0.1, 0.2]), "trained_betas has 2 entries but num_train_timesteps=1000"),
        (lambda: DDPMScheduler().set_timesteps(), "set_timesteps needs num_inference_steps"),
        (lambda: DDPMScheduler().set_timesteps(0), "num_inference_steps must be an integer >= 1"),
    ],
)
def test_bad_configuration_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_call_errors():
    sched = DDPMScheduler()
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"timestep must lie in \[0, 999\], got 1000"):
        sched.q_sample(x, 1000, x)
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 999\], got values -1..3"):
        sched.q_sample(x, torch.tensor([-1, 3]), x)
    with pytest.raises(ValueError, match=r"timesteps must have shape \[batch\] = \[2\]"):
        sched.q_sample(x, torch.tensor([1, 2, 3]), x)
    with pytest.raises(ValueError, match="timesteps must be integers"):
        sched.q_sample(x, torch.tensor([1.5, 2.0]), x)
    with pytest.raises(ValueError, match="shapes must match"):
        sched.q_sample(x, 3, torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="model output has 6 channels but the sample has 3.*learned_range"):
        sched.p_mean_variance(torch.zeros(2, 6, 4, 4), x, 5)
    with pytest.raises(ValueError, match="needs a model output with 2 x 3 channels"):
        DDPMScheduler(variance_type="learned_range").p_mean_variance(x, x, 5)
    with pytest.raises(ValueError, match="Unknown loss_type 'l2'"):
        sched.training_losses(x, x, x, x, torch.tensor([1, 2]), loss_type="l2")
    sched.set_timesteps(10)
    with pytest.raises(ValueError, match="timestep 7 is not in the sampling chain"):
        sched.step(x, 7, x)


def test_respaced_chain_keeps_abar_where_one_minus_abar_rounds_to_one():
    # abar_{T-1} ~ 1e-18: a one-step chain from T-1 has 1 - beta' = abar_{T-1} / 1, which rounds to 0 in float64
    # when recomputed from beta'; the respaced tables must keep abar itself (found by test_step_chain).
    T = 40
    sched = DDPMScheduler(num_train_timesteps=T, trained_betas=[0.65] * T, timestep_spacing="trailing",
                          clip_sample=False)
    abar = sched.diffusion.tables["alphas_cumprod"][T - 1]
    assert 0 < abar < 1e-16 and 1.0 - abar == 1.0
    sched.set_timesteps(1)
    x_t = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    x0 = sched.step(torch.zeros_like(x_t), T - 1, x_t).pred_original_sample
    assert torch.isfinite(x0).all()
    torch.testing.assert_close(x0, x_t / abar.sqrt(), rtol=1e-12, atol=0)  # x0 = x_t / sqrt(abar) for eps = 0
