import math

import diffusers
import numpy as np
import pytest
import torch

from hf_ddpm.schedules import PAPER_SCHEDULES, STOCK_SCHEDULES, check_betas, make_beta_schedule


def test_paper_schedules_closed_forms():
    T, b0, b1 = 1000, 1e-4, 0.02
    np.testing.assert_allclose(make_beta_schedule("linear", T, b0, b1).numpy(), np.linspace(b0, b1, T), rtol=1e-15)
    np.testing.assert_allclose(
        make_beta_schedule("quad", T, b0, b1).numpy(), np.linspace(b0**0.5, b1**0.5, T) ** 2, rtol=1e-14
    )
    assert torch.all(make_beta_schedule("const", T, b0, b1) == b1)
    jsd = make_beta_schedule("jsd", T, b0, b1).numpy()
    np.testing.assert_allclose(jsd, [1.0 / (T - i) for i in range(T)], rtol=1e-14)
    assert jsd[-1] == 1.0
    for name, fraction in (("warmup10", 0.1), ("warmup50", 0.5)):
        betas = make_beta_schedule(name, T, b0, b1).numpy()
        n = int(T * fraction)
        np.testing.assert_allclose(betas[:n], np.linspace(b0, b1, n), rtol=1e-14)
        assert np.all(betas[n:] == b1)


def test_cosine_matches_nichol_dhariwal():
    T = 1000
    f = lambda i: math.cos(((i / T) + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expected = [min(1 - f(i + 1) / f(i), 0.999) for i in range(T)]
    betas = make_beta_schedule("cosine", T)
    assert betas.dtype == torch.float64
    np.testing.assert_allclose(betas.numpy(), expected, rtol=1e-13)
    assert betas.max() == pytest.approx(0.999)
    # abar follows f(t)/f(0) until the 0.999 cap bites at the very end
    abar = torch.cumprod(1 - betas, 0).numpy()
    np.testing.assert_allclose(abar[:900], [f(i + 1) / f(0) for i in range(900)], rtol=1e-10)


@pytest.mark.parametrize("name", STOCK_SCHEDULES)
def test_stock_schedule_names_give_stock_betas(name):
    stock = diffusers.DDPMScheduler(beta_schedule=name).betas.double().numpy()
    ours = make_beta_schedule(name, 1000).numpy()
    np.testing.assert_allclose(ours, stock, rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("name", PAPER_SCHEDULES)
def test_every_schedule_is_valid_float64(name):
    betas = make_beta_schedule(name, 1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    check_betas(betas)


def test_schedule_errors():
    with pytest.raises(ValueError, match="Unknown beta_schedule 'lin'"):
        make_beta_schedule("lin", 10)
    with pytest.raises(ValueError, match="num_train_timesteps must be an integer >= 1"):
        make_beta_schedule("linear", 0)
    with pytest.raises(ValueError, match=r"outside \(0, 1\]"):
        check_betas(make_beta_schedule("linear", 10, 0.0, 0.02))
    with pytest.raises(ValueError, match=r"beta\[6\] = 1.033.* is outside"):
        check_betas(make_beta_schedule("linear", 10, 0.1, 1.5))
