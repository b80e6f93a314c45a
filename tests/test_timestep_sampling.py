"""Timestep samplers: uniform warm-up, unbiased weights, lower variance of the bound estimate, exact resumption."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_ddpm import LossSecondMomentSampler, UniformTimestepSampler

T = 50
HISTORY = 10


def vlb_profile() -> torch.Tensor:
    """Per-t bound terms shaped like L_vlb of a trained DDPM: large at small t (L_0, the first few L_t), tiny after."""
    t = torch.arange(T, dtype=torch.float64)
    return 4.0 * torch.exp(-t / 2.0) + 1e-3


def warmed_up_sampler(losses: torch.Tensor, seed: int = 0) -> LossSecondMomentSampler:
    """Feed every t HISTORY noisy observations of `losses`, in a shuffled order, as a training run would."""
    sampler = LossSecondMomentSampler(T, history_per_term=HISTORY)
    gen = torch.Generator().manual_seed(seed)
    timesteps = torch.arange(T).repeat(HISTORY)[torch.randperm(T * HISTORY, generator=gen)]
    observed = losses[timesteps] * (1 + 0.1 * torch.randn(T * HISTORY, generator=gen, dtype=torch.float64))
    for start in range(0, T * HISTORY, 64):  # batches of 64, like the gathered global batch
        sampler.update(timesteps[start:start + 64], observed[start:start + 64])
    return sampler


def test_warm_up_samples_exactly_like_the_uniform_sampler():
    sampler, uniform = LossSecondMomentSampler(T, history_per_term=HISTORY), UniformTimestepSampler(T)
    # every t gets HISTORY values except t = 7, which gets one fewer
    timesteps = torch.tensor([t for t in range(T) for _ in range(HISTORY) if (t, _) != (7, 0)])
    sampler.update(timesteps, torch.rand(len(timesteps), dtype=torch.float64) + torch.arange(T)[timesteps])
    assert not sampler.warmed_up
    torch.testing.assert_close(sampler.probabilities(), uniform.probabilities(), rtol=0, atol=0)
    drawn, weights = sampler.sample(256, torch.Generator().manual_seed(1))
    expected, _ = uniform.sample(256, torch.Generator().manual_seed(1))
    assert torch.equal(drawn, expected) and torch.equal(weights, torch.ones(256))
    sampler.update(torch.tensor([7]), torch.tensor([0.5]))
    assert sampler.warmed_up and not torch.allclose(sampler.probabilities(), uniform.probabilities())


def test_probabilities_follow_the_root_mean_square_of_the_last_losses():
    sampler = LossSecondMomentSampler(T, history_per_term=HISTORY, uniform_prob=0.01)
    values = torch.rand(T, HISTORY + 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for k in range(HISTORY + 3):  # three more than the history holds: the oldest three must be forgotten
        sampler.update(torch.arange(T), values[:, k])
    rms = values[:, -HISTORY:].pow(2).mean(dim=1).sqrt()
    expected = 0.99 * rms / rms.sum() + 0.01 / T
    torch.testing.assert_close(sampler.probabilities(), expected, rtol=1e-12, atol=0)
    assert sampler.probabilities().sum().item() == pytest.approx(1.0, abs=1e-12)


def test_weighted_estimate_is_unbiased():
    losses = vlb_profile()
    sampler = warmed_up_sampler(losses)
    p = sampler.probabilities()
    drawn, weights = sampler.sample(20000, torch.Generator().manual_seed(2))
    assert drawn.dtype == torch.int64 and weights.dtype == torch.float32
    # the weights returned are 1 / (T p_t) for the t drawn, so the exact expectation of the weighted loss,
    # sum_t p_t w_t L_t, is the uniform mean of L_t
    torch.testing.assert_close(weights.double(), 1.0 / (T * p[drawn]), rtol=1e-6, atol=0)
    assert (p * (1.0 / (T * p)) * losses).sum().item() == pytest.approx(losses.mean().item(), rel=1e-12)
    assert not torch.allclose(p, torch.full_like(p, 1.0 / T))  # importance sampling is on: the weights matter
    # and the draws follow p: the Monte Carlo mean is within 4 standard errors of the uniform mean
    estimates = weights.double() * losses[drawn]
    standard_error = ((p * (losses / (T * p)) ** 2).sum() - losses.mean() ** 2).sqrt() / len(drawn) ** 0.5
    assert abs(estimates.mean() - losses.mean()) < 4 * standard_error


def test_importance_sampling_lowers_the_variance_of_the_bound_estimate():
    losses = vlb_profile()
    total = losses.sum()
    samplers = {"uniform": UniformTimestepSampler(T), "importance": warmed_up_sampler(losses)}
    exact, empirical = {}, {}
    for name, sampler in samplers.items():
        p = sampler.probabilities()
        # one-sample estimate of sum_t L_t: T w_t L_t = L_t / p_t, with variance sum_t L_t^2 / p_t - (sum_t L_t)^2
        exact[name] = ((losses**2 / p).sum() - total**2).item()
        drawn, weights = sampler.sample(20000, torch.Generator().manual_seed(3))
        empirical[name] = (T * weights.double() * losses[drawn]).var().item()
    assert exact["importance"] / exact["uniform"] < 0.5
    assert empirical["importance"] / empirical["uniform"] < 0.5
    assert empirical["uniform"] == pytest.approx(exact["uniform"], rel=0.2)  # the draws measure what p promises


def test_state_round_trip_through_safetensors_and_json_gives_identical_draws(tmp_path):
    sampler = warmed_up_sampler(vlb_profile())
    save_file(sampler.state_dict(), tmp_path / "sampler.safetensors")
    from_safetensors = LossSecondMomentSampler(T, history_per_term=HISTORY)
    from_safetensors.load_state_dict(load_file(tmp_path / "sampler.safetensors"))
    from_json = LossSecondMomentSampler(T, history_per_term=HISTORY)
    as_json = json.dumps({key: value.tolist() for key, value in sampler.state_dict().items()})
    from_json.load_state_dict({key: torch.tensor(value) for key, value in json.loads(as_json).items()})
    fresh = LossSecondMomentSampler(T, history_per_term=HISTORY)
    for step in range(3):  # draw, then record losses for the draw: the resumed samplers must stay in lockstep
        draws = [s.sample(32, torch.Generator().manual_seed(step)) for s in (sampler, from_safetensors, from_json, fresh)]
        for t, w in draws[1:3]:
            assert torch.equal(t, draws[0][0]) and torch.equal(w, draws[0][1])
        assert not torch.equal(draws[3][0], draws[0][0])  # without the state the draws differ
        for s in (sampler, from_safetensors, from_json):
            s.update(draws[0][0], vlb_profile()[draws[0][0]] * (1 + step))
    with pytest.raises(ValueError, match="build it with the num_timesteps and history_per_term of the run"):
        LossSecondMomentSampler(T + 1).load_state_dict(sampler.state_dict())


def test_bad_inputs_are_refused_with_one_line():
    sampler = LossSecondMomentSampler(T)
    with pytest.raises(ValueError, match="pass per-example losses"):
        sampler.update(torch.tensor([1, 2]), torch.tensor(0.5))
    with pytest.raises(ValueError, match=rf"timesteps must be integers in \[0, {T - 1}\]"):
        sampler.update(torch.tensor([T]), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="losses must be finite"):
        sampler.update(torch.tensor([1]), torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match=r"uniform_prob must lie in \(0, 1\]"):
        LossSecondMomentSampler(T, uniform_prob=0.0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        sampler.sample(0)
    with pytest.raises(ValueError, match="UniformTimestepSampler keeps no state"):
        UniformTimestepSampler(T).load_state_dict(sampler.state_dict())
