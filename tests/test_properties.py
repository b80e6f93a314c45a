"""Property-based tests (hypothesis) of `hf_ddpm.DDPMScheduler`'s math.

Inputs are drawn at random: schedules (explicit `trained_betas` of length 1..300 with betas anywhere in
[1e-8, 0.999], extremes pinned at random positions, and every named schedule with random T and beta range,
optionally rescaled to zero terminal SNR), shapes [B, C, *spatial] with 0..3 spatial dims, scalar (int or 0-d)
and per-sample [B] timesteps, float32 and float64 data, every prediction / variance / loss type.

Notation as in docs/ddpm-facts.md: beta_t, alpha_t = 1 - beta_t, abar_t (alphas_cumprod), abar_prev_t = abar_{t-1}.

Where eps-prediction is defined. x0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps has condition number
sqrt(1/abar_t), which must be representable in the data dtype. `jsd` and zero-terminal-SNR rescaling make
abar_{T-1} = 0 exactly (undefined); long runs of betas near 1 make abar underflow. The "no NaN/Inf" properties
for eps-prediction therefore draw timesteps with abar_t >= ABAR_MIN[dtype] (1e-300 in float64: 1/abar stays
finite with 8 orders of headroom; 1e-60 in float32: sqrt(1/abar) <= 1e30, 8 orders below float32's max, which
also leaves room for a full reverse chain, whose x_t grows by prod 1/sqrt(alpha) = sqrt(1/abar)). x0- and
v-prediction never divide by abar and are tested at every timestep. `test_zero_terminal_snr_schedules` covers
abar = 0 on its own.

The last section holds deterministic regressions of bugs these properties found (trailing spacing, negative
batched timesteps, float64 precision at t = 0, subnormal abar, stock diffusers' thresholding of [B, C] samples),
now fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler as StockDDPMScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr
from hypothesis import Phase, assume, event, given, note, settings
from hypothesis import strategies as st

from hf_ddpm import DDPMScheduler
from hf_ddpm.schedules import SCHEDULES, make_beta_schedule

LN2 = math.log(2.0)
DTYPES = (torch.float32, torch.float64)
EPS = {dtype: torch.finfo(dtype).eps for dtype in DTYPES}
ABAR_MIN = {torch.float64: 1e-300, torch.float32: 1e-60}  # see the module docstring
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
LEARNED = ("learned", "learned_range")
LEARNED_LOG_VARIANCE_RANGE = (-20.0, 2.0)  # 'learned': the extra channels are log sigma^2 (Improved DDPM)
DECODER_NLL_MAX = -math.log2(1e-12)  # the decoder floors each bin's probability at 1e-12

# max_examples per test, chosen so that the whole file runs in well under 40 s on a shared 2-core machine.
# (The "explain" phase is left out: it re-runs hundreds of examples after a failure and adds little here.)
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
FAST = settings(max_examples=150, deadline=None, phases=PHASES)
MEDIUM = settings(max_examples=100, deadline=None, phases=PHASES)
SLOW = settings(max_examples=60, deadline=None, phases=PHASES)


# ---------------------------------------------------------------------------------------------- strategies
@dataclass
class Schedule:
    kwargs: dict  # DDPMScheduler keyword arguments that define the beta table
    betas: np.ndarray  # the float64 betas the scheduler must use (trained_betas, or make_beta_schedule's)
    abar: np.ndarray  # float64 cumulative products of 1 - betas

    @property
    def T(self) -> int:
        return len(self.betas)

    def eps_t_max(self, dtype) -> int:
        """Largest t where eps-prediction is well defined in `dtype` (abar is non-increasing): -1 if none."""
        ok = np.nonzero(self.abar >= ABAR_MIN[dtype])[0]
        return int(ok[-1]) if len(ok) else -1

    def make(self, **kwargs) -> DDPMScheduler:
        return DDPMScheduler(**self.kwargs, **kwargs)


def _tables(betas: torch.Tensor):
    """(betas, abar) as float64 numpy arrays; abar = torch.cumprod(1 - betas), the same float64 operations as the
    scheduler's table, so that "abar underflowed to 0" means the same thing here and there."""
    return betas.numpy(), torch.cumprod(1.0 - betas, dim=0).numpy()


@st.composite
def schedules(draw, rescale=True, min_T=1):
    """A random beta table: explicit trained_betas, or a named schedule with random T (and beta range)."""
    T = draw(st.integers(min_T, 300))
    if draw(st.booleans()):
        # log-uniform betas between two drawn exponents in [-8, log10(0.999)], plus extremes at drawn positions
        lo = draw(st.floats(-8.0, math.log10(0.999)))
        hi = draw(st.floats(lo, math.log10(0.999)))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        betas = 10.0 ** rng.uniform(lo, hi, T)
        pins = draw(st.dictionaries(st.integers(0, T - 1), st.sampled_from([1e-8, 1e-6, 1e-4, 0.5, 0.9, 0.999]), max_size=4))
        for i, value in pins.items():
            betas[i] = value
        betas = np.clip(betas, 1e-8, 0.999)
        kwargs = {"num_train_timesteps": T, "trained_betas": betas.tolist()}
        betas = torch.tensor(betas, dtype=torch.float64)
    else:
        name = draw(st.sampled_from(SCHEDULES))
        beta_start, beta_end = draw(
            st.one_of(
                st.just((1e-4, 0.02)),
                st.tuples(st.floats(1e-8, 0.01), st.floats(0.01, 0.999)),
            )
        )
        kwargs = {"num_train_timesteps": T, "beta_schedule": name, "beta_start": beta_start, "beta_end": beta_end}
        betas = make_beta_schedule(name, T, beta_start, beta_end)
    # Zero-terminal-SNR rescaling divides consecutive shifted sqrt(abar): it needs abar_{T-2} > 0 (a schedule
    # whose abar has already underflowed to 0 gives 0/0 = NaN betas, which the scheduler rejects).
    if rescale and T >= 2 and torch.cumprod(1 - betas, 0)[-2] > 0 and draw(st.booleans()):
        kwargs["rescale_betas_zero_snr"] = True
        betas = rescale_zero_terminal_snr(betas.clone())
    betas = betas.numpy()
    event(f"T {'1' if T == 1 else '2-10' if T <= 10 else '11-100' if T <= 100 else '101-300'}")
    note(f"schedule: { {k: v for k, v in kwargs.items() if k != 'trained_betas'} }, betas[:8]={betas[:8]}")
    return Schedule(kwargs, *_tables(torch.tensor(betas)))


@st.composite
def shapes(draw):
    batch, channels = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    spatial = draw(st.lists(st.integers(1, 6), min_size=0, max_size=3))
    return (batch, channels, *spatial)


@st.composite
def timesteps(draw, batch: int, t_max: int):
    """(timestep argument, per-sample list): an int, a 0-d tensor, or a [B] long tensor in [0, t_max]."""
    one = st.one_of(st.just(0), st.just(t_max), st.integers(0, t_max))
    form = draw(st.sampled_from(["int", "0-d", "batch"]))
    if form == "batch":
        values = draw(st.lists(one, min_size=batch, max_size=batch))
        return torch.tensor(values, dtype=torch.long), values
    value = draw(one)
    return (value if form == "int" else torch.tensor(value)), [value] * batch


def randn(draw, shape, dtype, scale=1.0):
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    return (scale * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype)


def uniform(draw, shape, dtype, low, high):
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    return (low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)).to(dtype)


def data_x0(draw, shape, dtype, on_grid=False):
    """Data in [-1, 1]; on the 8-bit grid 2k/255 - 1 (what the discretized decoder scores) when asked."""
    x0 = uniform(draw, shape, torch.float64, -1.0, 1.0)
    if on_grid:
        x0 = torch.round((x0 + 1) * 127.5) / 127.5 - 1
    return x0.to(dtype)


def model_output(draw, variance_type, prediction, dtype):
    """A model output for `variance_type`: the prediction, plus C variance channels for learned variances."""
    if variance_type == "learned_range":  # v in [-1, 1]: all at an end, or uniform
        end = draw(st.sampled_from([None, -1.0, 1.0]))
        values = torch.full_like(prediction, end) if end is not None else uniform(draw, prediction.shape, dtype, -1, 1)
    elif variance_type == "learned":
        values = uniform(draw, prediction.shape, dtype, *LEARNED_LOG_VARIANCE_RANGE)
    else:
        return prediction
    return torch.cat([prediction, values], dim=1)


def finite(*tensors) -> bool:
    return all(bool(torch.isfinite(x).all()) for x in tensors)


def per_sample(fn, t_list, *tensors):
    """fn(t_i, x_i...) called with a scalar timestep on each sample's slice [i:i+1]."""
    return [fn(t, *(x[i : i + 1] for x in tensors)) for i, t in enumerate(t_list)]


def table(values: np.ndarray, t_list, like: torch.Tensor) -> torch.Tensor:
    """Reference float64 values at per-sample timesteps, shaped [B, 1, ...] to broadcast against `like`."""
    return torch.tensor(values[t_list], dtype=torch.float64).view(-1, *([1] * (like.ndim - 1)))


# ---------------------------------------------------------------------------------------------- forward process, posterior
@FAST
@given(schedules(), shapes(), st.sampled_from(DTYPES), st.data())
def test_forward_process_and_posterior(schedule, shape, dtype, data):
    sched = schedule.make()
    t, t_list = data.draw(timesteps(shape[0], schedule.T - 1))
    x0, noise = data_x0(data.draw, shape, dtype), randn(data.draw, shape, dtype)

    x_t = sched.q_sample(x0, t, noise)
    mean, var, log_var = sched.q_mean_variance(x0, t)
    post_mean, post_var, post_log_var = sched.q_posterior_mean_variance(x0, x_t, t)
    for out in (x_t, mean, var, log_var, post_mean, post_var, post_log_var):
        assert out.shape == shape and out.dtype == dtype
    assert finite(x_t, mean, var, log_var, post_mean, post_var, post_log_var)
    assert bool(((var >= 0) & (var <= 1)).all())

    # 0 <= beta~_t <= beta_t since (1 - abar_{t-1}) <= (1 - abar_t); beta~_0 = 0 exactly, beta~_t > 0 for t >= 1
    beta = table(schedule.betas, t_list, x0).to(dtype)
    assert bool((post_var <= beta).all()) and bool((post_var >= 0).all())
    is_first = table(np.arange(schedule.T), t_list, x0) == 0
    assert bool(torch.where(is_first, post_var == 0, post_var > 0).all())
    # the log-variance is log beta~_t for t >= 1 ("clipped": beta~_1 at t = 0, beta_0 when T = 1)
    tol = 8 * EPS[dtype] * (1 + post_log_var.abs())
    later = ~is_first.expand_as(post_var)
    assert bool(((post_log_var - torch.log(post_var)).abs()[later] <= tol[later]).all())

    # posterior mean coefficients, read through the public API: mu~ = coef1 x0 + coef2 x_t
    ones, zeros = torch.ones(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
    coef1 = sched.q_posterior_mean_variance(ones, zeros, t)[0]
    coef2 = sched.q_posterior_mean_variance(zeros, ones, t)[0]
    assert bool((coef1 >= 0).all()) and bool((coef2 >= 0).all())
    # coef2 = (1 - abar_prev_t) sqrt(alpha_t) / (1 - abar_t): 0 at t = 0 (x_t is ignored), > 0 for t >= 1 unless
    # beta_t = 1 (zero terminal SNR: alpha_t = 0)
    assert bool(torch.where(is_first | (beta == 1), coef2 == 0, coef2 > 0).all())

    # batched timesteps give bitwise the per-sample results with scalar timesteps
    for batched, name in ((x_t, "q_sample"), (post_mean, "posterior mean"), (post_var, "posterior variance")):
        fn = {
            "q_sample": lambda ti, a, n: sched.q_sample(a, ti, n),
            "posterior mean": lambda ti, a, n: sched.q_posterior_mean_variance(a, sched.q_sample(a, ti, n), ti)[0],
            "posterior variance": lambda ti, a, n: sched.q_posterior_mean_variance(a, sched.q_sample(a, ti, n), ti)[1],
        }[name]
        assert torch.equal(torch.cat(per_sample(fn, t_list, x0, noise)), batched), name

    if dtype != torch.float64:
        return
    # Exact identities of the posterior (derivations below), checked in float64 with a rounding tolerance.
    # Tables hold beta_t and alpha_t = fl(1 - beta_t), so beta_t + alpha_t = 1 only up to eps/2, and
    # abar_t = fl(abar_{t-1} alpha_t) is off by eps relative: both identities below then hold up to a relative
    # error ~ few eps / (1 - abar_t) (the denominator of every coefficient); we allow 32 eps / (1 - abar_t).
    b = table(schedule.abar, t_list, x0)  # abar_t
    rel = 32 * EPS[dtype] / (1 - b)
    # (1) Consistency of means: if x_t = sqrt(abar_t) x0 (noise 0) then mu~ = sqrt(abar_{t-1}) x0, the mean of
    #     q(x_{t-1} | x0). Proof: coef1 + coef2 sqrt(abar_t)
    #     = [beta_t sqrt(abar_{t-1}) + (1 - abar_{t-1}) sqrt(alpha_t) sqrt(alpha_t abar_{t-1})] / (1 - abar_t)
    #     = sqrt(abar_{t-1}) [beta_t + alpha_t - abar_t] / (1 - abar_t) = sqrt(abar_{t-1}).
    clean = sched.q_sample(x0, t, torch.zeros_like(x0))
    mu = sched.q_posterior_mean_variance(x0, clean, t)[0]
    t_prev = [max(ti - 1, 0) for ti in t_list]
    prev_mean = torch.cat([sched.q_mean_variance(x0[i : i + 1], tp)[0] for i, tp in enumerate(t_prev)])
    expected = torch.where(is_first, x0, prev_mean)
    assert bool(((mu - expected).abs() <= rel * (coef1 + coef2 * b.sqrt() + 1) * x0.abs()).all())
    # (2) Law of total variance: Var q(x_{t-1} | x0) = Var[E(x_{t-1} | x_t, x0)] + E[Var(x_{t-1} | x_t, x0)],
    #     i.e. 1 - abar_{t-1} = coef2^2 (1 - abar_t) + beta~_t. Proof: the right side is
    #     (1 - abar_{t-1}) [(1 - abar_{t-1}) alpha_t + beta_t] / (1 - abar_t) = (1 - abar_{t-1}) (1 - abar_t) / (1 - abar_t).
    one_minus_b = sched.q_mean_variance(x0, t)[1]
    prev_var = torch.cat([sched.q_mean_variance(x0[i : i + 1], tp)[1] for i, tp in enumerate(t_prev)])
    prev_var = torch.where(is_first, torch.zeros_like(prev_var), prev_var)
    total = coef2**2 * one_minus_b + post_var
    assert bool(((total - prev_var).abs() <= rel * (total + prev_var)).all())


# ---------------------------------------------------------------------------------------------- predict_x0
def eps_inversion_error(abar, x0, x_t, noise):
    """Rounding bound for x0_hat = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps with x_t = q_sample(x0, t, eps), float64.

    Two condition numbers: sqrt(1/abar) amplifies the rounding of x_t (large when abar -> 0); and the tables
    store abar, so 1 - abar and 1/abar - 1 are differences carrying an absolute error ~eps, i.e. a relative
    error ~eps / (1 - abar), which sqrt(1 - abar) eps turns into ~eps |eps| / sqrt(abar (1 - abar)) (large
    when abar -> 1, i.e. for tiny betas at small t: ~1e4 eps for beta_0 = 1e-8).
    """
    eps = EPS[torch.float64]
    return 16 * eps * (
        (1 / abar).sqrt() * x_t.abs() + (1 / (abar * (1 - abar))).sqrt() * noise.abs() + x0.abs()
    )


@FAST
@given(schedules(), shapes(), st.sampled_from(PREDICTION_TYPES), st.sampled_from(VARIANCE_TYPES), st.data())
def test_predict_x0_inverts_q_sample(schedule, shape, prediction_type, variance_type, data):
    dtype = torch.float64
    t_max = schedule.eps_t_max(dtype) if prediction_type == "epsilon" else schedule.T - 1
    assume(t_max >= 0)
    sched = schedule.make(prediction_type=prediction_type, variance_type=variance_type)
    t, t_list = data.draw(timesteps(shape[0], t_max))
    x0, noise = data_x0(data.draw, shape, dtype), randn(data.draw, shape, dtype)
    x_t = sched.q_sample(x0, t, noise)
    b = table(schedule.abar, t_list, x0)
    target = {"epsilon": noise, "sample": x0, "v_prediction": b.sqrt() * noise - (1 - b).sqrt() * x0}[prediction_type]
    out = model_output(data.draw, variance_type, target, dtype)  # extra variance channels must be ignored
    x0_hat = sched.predict_x0(out, x_t, t)
    assert x0_hat.shape == shape and x0_hat.dtype == dtype and finite(x0_hat)
    eps = EPS[dtype]
    if prediction_type == "sample":
        assert torch.equal(x0_hat, x0)
    elif prediction_type == "epsilon":
        assert bool(((x0_hat - x0).abs() <= eps_inversion_error(b, x0, x_t, noise)).all())
    else:
        # x0 = sqrt(abar) x_t - sqrt(1 - abar) v: well conditioned at every t (abar = 0 included)
        tol = 16 * eps * (x_t.abs() + target.abs() + x0.abs() + noise.abs())
        assert bool(((x0_hat - x0).abs() <= tol).all())
    batched = torch.cat(per_sample(lambda ti, o, x: sched.predict_x0(o, x, ti), t_list, out, x_t))
    assert torch.equal(batched, x0_hat)


# ---------------------------------------------------------------------------------------------- reverse process p
@FAST
@given(
    schedules(),
    shapes(),
    st.sampled_from(DTYPES),
    st.sampled_from(PREDICTION_TYPES),
    st.sampled_from(VARIANCE_TYPES),
    st.sampled_from(["none", "clip", "threshold"]),
    st.data(),
)
def test_p_mean_variance(schedule, shape, dtype, prediction_type, variance_type, processing, data):
    t_max = schedule.eps_t_max(dtype) if prediction_type == "epsilon" else schedule.T - 1
    assume(t_max >= 0)
    if processing == "threshold" and len(shape) == 2:  # bug, see test_thresholding_without_spatial_dims
        shape = (*shape, 1)
    clip_range = data.draw(st.floats(0.5, 2.0))
    sample_max = data.draw(st.floats(1.0, 3.0))
    sched = schedule.make(
        prediction_type=prediction_type,
        variance_type=variance_type,
        thresholding=processing == "threshold",
        clip_sample_range=clip_range,
        sample_max_value=sample_max,
    )
    t, t_list = data.draw(timesteps(shape[0], t_max))
    x_t = randn(data.draw, shape, dtype, scale=data.draw(st.floats(0.0, 4.0)))
    prediction = randn(data.draw, shape, dtype, scale=data.draw(st.floats(0.0, 10.0)))
    out = model_output(data.draw, variance_type, prediction, dtype)
    p = sched.p_mean_variance(out, x_t, t, clip_denoised=processing != "none")

    assert set(p) == {"mean", "variance", "log_variance", "pred_x0"}
    for value in p.values():
        assert value.shape == shape and value.dtype == dtype
    assert finite(*p.values())
    assert bool((p["variance"] >= 0).all())
    if processing == "clip":
        assert bool((p["pred_x0"].abs() <= clip_range).all())
    elif processing == "threshold":  # dynamic thresholding: clamp to [-s, s] and divide by s, 1 <= s <= max
        assert bool((p["pred_x0"].abs() <= 1 + 4 * EPS[dtype]).all())
    # mu_theta = mu~(x0_hat, x_t): the posterior mean of the (processed) x0 prediction
    assert torch.equal(p["mean"], sched.q_posterior_mean_variance(p["pred_x0"], x_t, t)[0])

    post_var, post_log_var = sched.q_posterior_mean_variance(p["pred_x0"], x_t, t)[1:]
    is_first = (table(np.arange(schedule.T), t_list, x_t) == 0).expand(shape)
    beta = table(schedule.betas, t_list, x_t).to(dtype).expand(shape)
    log_beta = table(np.log(schedule.betas), t_list, x_t).to(dtype).expand(shape)
    if variance_type.startswith("fixed_small"):  # sigma^2 = beta~_t, log-variance clipped
        assert torch.equal(p["variance"], post_var) and torch.equal(p["log_variance"], post_log_var)
    elif variance_type.startswith("fixed_large"):  # sigma^2 = beta_t; log uses beta~_1 at t = 0
        assert torch.equal(p["variance"], beta)
        tol = 4 * EPS[dtype] * (1 + log_beta.abs())
        assert bool(((p["log_variance"] - log_beta).abs()[~is_first] <= tol[~is_first]).all())
        assert torch.equal(p["log_variance"][is_first], post_log_var[is_first])
    elif variance_type == "learned":  # the extra channels are log sigma^2
        assert torch.equal(p["log_variance"], out[:, shape[1] :])
    else:  # learned_range: a convex combination of log beta~_t (clipped) and log beta_t
        lower, upper = torch.minimum(post_log_var, log_beta), torch.maximum(post_log_var, log_beta)
        tol = 4 * EPS[dtype] * (1 + upper.abs() + lower.abs())
        assert bool(((p["log_variance"] >= lower - tol) & (p["log_variance"] <= upper + tol)).all())
    if variance_type in LEARNED:
        assert torch.equal(p["variance"], torch.exp(p["log_variance"]))

    def one(ti, o, x):
        return sched.p_mean_variance(o, x, ti, clip_denoised=processing != "none")

    singles = per_sample(one, t_list, out, x_t)
    for key in p:
        assert torch.equal(torch.cat([s[key] for s in singles]), p[key]), key


# ---------------------------------------------------------------------------------------------- bits/dim
def kl_rounding_tolerance(dtype, true_log_var, model_log_var):
    """KL = 0.5 (-1 + lv2 - lv1 + e^(lv1 - lv2) + ...) >= 0 exactly; in floats each term carries ~eps x its size."""
    size = 2 + true_log_var.abs() + model_log_var.abs() + torch.exp(true_log_var - model_log_var)
    return 8 * EPS[dtype] * size.flatten(1).amax(1) / LN2


@MEDIUM
@given(
    schedules(),
    shapes(),
    st.sampled_from(DTYPES),
    st.sampled_from(PREDICTION_TYPES),
    st.sampled_from(VARIANCE_TYPES),
    st.booleans(),
    st.data(),
)
def test_vb_terms_and_prior_bpd(schedule, shape, dtype, prediction_type, variance_type, clip, data):
    t_max = schedule.eps_t_max(dtype) if prediction_type == "epsilon" else schedule.T - 1
    assume(t_max >= 0)
    sched = schedule.make(prediction_type=prediction_type, variance_type=variance_type)
    t, t_list = data.draw(timesteps(shape[0], t_max))
    x0 = data_x0(data.draw, shape, dtype, on_grid=True)
    x_t = sched.q_sample(x0, t, randn(data.draw, shape, dtype))
    out = model_output(data.draw, variance_type, randn(data.draw, shape, dtype, scale=data.draw(st.floats(0, 5))), dtype)
    vb = sched.vb_terms_bpd(out, x0, x_t, t, clip_denoised=clip)
    terms = vb["output"]
    assert terms.shape == (shape[0],) and terms.dtype == dtype and finite(terms, vb["pred_x0"])

    first = torch.tensor([ti == 0 for ti in t_list])
    # t = 0: the discretized decoder's NLL, -mean log P(bin) with 1e-12 <= P(bin) <= 1: in [0, log2(1e12)] bits
    assert bool((terms[first] >= 0).all()) and bool((terms[first] <= DECODER_NLL_MAX + 1e-4).all())
    # t >= 1: KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) >= 0, up to rounding
    true_log_var = sched.q_posterior_mean_variance(x0, x_t, t)[2]
    model_log_var = sched.p_mean_variance(out, x_t, t, clip_denoised=clip)["log_variance"]
    tol = kl_rounding_tolerance(dtype, true_log_var, model_log_var)
    assert bool((terms[~first] >= -tol[~first]).all())

    prior = sched.prior_bpd(x0)  # KL(q(x_{T-1} | x0) || N(0, I)) >= 0
    assert prior.shape == (shape[0],) and prior.dtype == dtype and finite(prior)
    assert bool((prior >= -8 * EPS[dtype] / LN2).all())

    singles = per_sample(lambda ti, o, a, x: sched.vb_terms_bpd(o, a, x, ti, clip_denoised=clip)["output"], t_list, out, x0, x_t)
    torch.testing.assert_close(torch.cat(singles), terms, rtol=8 * EPS[dtype], atol=8 * EPS[dtype])


@MEDIUM
@given(schedules(), shapes(), st.sampled_from(PREDICTION_TYPES), st.sampled_from(["fixed_small", "learned_range"]), st.data())
def test_kl_is_zero_for_the_true_posterior(schedule, shape, prediction_type, variance_type, data):
    """A model that predicts the true eps / x0 / v, with sigma^2 = beta~_t (fixed_small, or learned_range at
    v = -1), makes p = q(x_{t-1} | x_t, x0): every KL term is 0 (exactly for x0-prediction, up to the
    conditioning of x0_hat for eps and v)."""
    dtype = torch.float64
    t_max = schedule.eps_t_max(dtype) if prediction_type == "epsilon" else schedule.T - 1
    assume(t_max >= 1)
    sched = schedule.make(prediction_type=prediction_type, variance_type=variance_type)
    t_list = data.draw(st.lists(st.integers(1, t_max), min_size=shape[0], max_size=shape[0]))
    t = torch.tensor(t_list)
    x0, noise = data_x0(data.draw, shape, dtype), randn(data.draw, shape, dtype)
    x_t = sched.q_sample(x0, t, noise)
    b = table(schedule.abar, t_list, x0)
    target = {"epsilon": noise, "sample": x0, "v_prediction": b.sqrt() * noise - (1 - b).sqrt() * x0}[prediction_type]
    out = torch.cat([target, -torch.ones_like(target)], 1) if variance_type == "learned_range" else target
    kl = sched.vb_terms_bpd(out, x0, x_t, t, clip_denoised=False)["output"]
    # KL's variance part is 0.5 (-1 + lv2 - lv1 + e^(lv1 - lv2)) with lv1 = lv2: 0 up to the rounding of
    # (-1 + lv2) - lv1, ~eps |lv| (see kl_rounding_tolerance)
    log_var = sched.q_posterior_mean_variance(x0, x_t, t)[2]
    variance_rounding = kl_rounding_tolerance(dtype, log_var, log_var)
    if prediction_type == "sample":  # x0_hat = x0 exactly, so the means agree exactly
        assert bool((kl.abs() <= variance_rounding).all())
        return
    # the variances match exactly, so KL = 0.5 (dmu)^2 / beta~_t per dim, with dmu = coef1 (x0_hat - x0) and
    # |x0_hat - x0| bounded as in test_predict_x0_inverts_q_sample
    eps = EPS[dtype]
    if prediction_type == "epsilon":
        dx0 = eps_inversion_error(b, x0, x_t, noise)
    else:
        dx0 = 16 * eps * (x_t.abs() + target.abs() + x0.abs() + noise.abs())
    coef1 = sched.q_posterior_mean_variance(torch.ones_like(x0), torch.zeros_like(x0), t)[0]
    post_var = sched.q_posterior_mean_variance(x0, x_t, t)[1]
    bound = (0.5 * (coef1 * dx0) ** 2 / post_var).flatten(1).amax(1) / LN2 + variance_rounding
    assert bool((kl.abs() <= bound).all()), (kl, bound)


# ---------------------------------------------------------------------------------------------- training losses
@MEDIUM
@given(
    schedules(),
    shapes(),
    st.sampled_from(DTYPES),
    st.sampled_from(PREDICTION_TYPES),
    st.sampled_from(VARIANCE_TYPES),
    st.sampled_from(["simple", "kl", "hybrid"]),
    st.sampled_from([None, "min_snr", "p2"]),
    st.data(),
)
def test_training_losses(schedule, shape, dtype, prediction_type, variance_type, loss_type, weighting, data):
    t_max = schedule.eps_t_max(dtype) if prediction_type == "epsilon" else schedule.T - 1
    assume(t_max >= 0)
    sched = schedule.make(prediction_type=prediction_type, variance_type=variance_type)
    t, t_list = data.draw(timesteps(shape[0], t_max))
    x0 = data_x0(data.draw, shape, dtype, on_grid=True)
    noise = randn(data.draw, shape, dtype)
    x_t = sched.q_sample(x0, t, noise)
    out = model_output(data.draw, variance_type, randn(data.draw, shape, dtype, scale=data.draw(st.floats(0, 5))), dtype)
    options = {
        "loss_type": loss_type,
        "loss_weighting": weighting,
        "snr_gamma": data.draw(st.floats(0.1, 10.0)),
        "p2_k": data.draw(st.floats(0.5, 2.0)),
        "p2_gamma": data.draw(st.floats(0.0, 2.0)),
    }
    losses = sched.training_losses(out, x0, x_t, noise, t, **options)

    expected_keys = {"loss"}
    if loss_type in ("simple", "hybrid"):
        expected_keys.add("mse")
    if loss_type == "kl" or (loss_type == "hybrid" and variance_type in LEARNED):
        expected_keys.add("vb")
    assert set(losses) == expected_keys
    for value in losses.values():
        assert value.shape == (shape[0],) and value.dtype == dtype and finite(value)
    if "mse" in losses:
        assert bool((losses["mse"] >= 0).all())
    if "vb" in losses:
        true_log_var = sched.q_posterior_mean_variance(x0, x_t, t)[2]
        model_log_var = sched.p_mean_variance(out, x_t, t, clip_denoised=False)["log_variance"]
        tol = kl_rounding_tolerance(dtype, true_log_var, model_log_var) * (schedule.T / 1000 if loss_type == "hybrid" else 1)
        first = torch.tensor([ti == 0 for ti in t_list])
        assert bool((losses["vb"][~first] >= -tol[~first]).all())
        assert bool((losses["vb"][first] >= 0).all())  # decoder NLL
    assert torch.equal(losses["loss"], losses.get("mse", 0.0) + losses.get("vb", 0.0))
    if loss_type == "simple" and weighting is None and prediction_type == "sample":
        assert torch.equal(losses["loss"], ((out[:, : shape[1]] - x0) ** 2).flatten(1).mean(1))

    singles = per_sample(lambda ti, o, a, x, n: sched.training_losses(o, a, x, n, ti, **options)["loss"], t_list, out, x0, x_t, noise)
    torch.testing.assert_close(torch.cat(singles), losses["loss"], rtol=8 * EPS[dtype], atol=8 * EPS[dtype])


# ---------------------------------------------------------------------------------------------- sampling: step()
def stock_trailing_is_broken(T: int, n: int) -> bool:
    """Stock diffusers' 'trailing' spacing, np.round(np.arange(T, 0, -T / n)) - 1, yields n + 1 steps (the last
    one -1) whenever float rounding leaves a tiny positive remainder; see test_trailing_spacing_* below."""
    return len(np.arange(T, 0, -T / n)) != n


@SLOW
@given(
    schedules(),
    shapes(),
    st.sampled_from(DTYPES),
    st.sampled_from(PREDICTION_TYPES),
    st.sampled_from(VARIANCE_TYPES),
    st.sampled_from(["linspace", "leading", "trailing"]),
    st.sampled_from(["none", "clip", "threshold"]),
    st.data(),
)
def test_step_chain(schedule, shape, dtype, prediction_type, variance_type, spacing, processing, data):
    if processing == "threshold" and len(shape) == 2:  # bug, see test_thresholding_without_spatial_dims
        shape = (*shape, 1)
    sched = schedule.make(
        prediction_type=prediction_type,
        variance_type=variance_type,
        timestep_spacing=spacing,
        clip_sample=processing == "clip",
        thresholding=processing == "threshold",
    )
    n = data.draw(st.one_of(st.just(schedule.T), st.integers(1, schedule.T)))
    assume(not (spacing == "trailing" and stock_trailing_is_broken(schedule.T, n)))  # bug, reported separately
    # Respacing keeps abar at the chain's steps and sets beta'_k = 1 - abar_{S_k} / abar_{S_{k-1}}: 0/0 (or 0, for
    # two equal subnormals) where abar has underflowed at two kept steps (betas near 1 for ~100+ steps). The
    # scheduler refuses such a chain with a ValueError (for every prediction type, although x0 / v sampling would
    # be well defined); the full T-step chain needs no respacing and always works.
    stock = StockDDPMScheduler(num_train_timesteps=schedule.T, timestep_spacing=spacing)
    stock.set_timesteps(n)
    kept = sorted(stock.timesteps.tolist())
    kept_abar = torch.tensor(schedule.abar[kept])
    respaced = 1 - kept_abar / torch.cat([torch.ones(1, dtype=torch.float64), kept_abar[:-1]])
    if kept != list(range(schedule.T)) and not bool(((respaced > 0) & (respaced <= 1)).all()):
        with pytest.raises(ValueError):
            sched.set_timesteps(n)
        event("respaced chain through underflowed abar = 0: ValueError")
        return
    sched.set_timesteps(n)
    chain = sched.timesteps.tolist()
    assert chain == stock.timesteps.tolist()
    assert len(chain) == n and chain == sorted(set(chain), reverse=True) and 0 <= chain[-1] and chain[0] < schedule.T
    if prediction_type == "epsilon":
        assume(chain[0] <= schedule.eps_t_max(dtype))
    full_chain = chain == list(range(schedule.T - 1, -1, -1))
    event(f"chain: {'all T' if full_chain else '1 step' if n == 1 else 'respaced'}, n {'<= 10' if n <= 10 else '11-100' if n <= 100 else '> 100'}")

    batch = shape[0]
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**32 - 1)))

    def gaussian(scale=1.0):
        return (scale * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype)

    def uniform_(low, high):
        return (low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)).to(dtype)

    def output(prediction):
        if variance_type == "learned_range":
            return torch.cat([prediction, uniform_(-1.0, 1.0)], 1)
        if variance_type == "learned":
            return torch.cat([prediction, uniform_(*LEARNED_LOG_VARIANCE_RANGE)], 1)
        return prediction

    x = gaussian()
    scale = data.draw(st.floats(0.0, 5.0))
    check_at = data.draw(st.integers(0, n - 1))  # where the batched-vs-scalar and noise checks run
    for k, t in enumerate(sched.timesteps):
        out, z = output(gaussian(scale)), gaussian()
        result = sched.step(out, t, x, variance_noise=z)
        prev, x0_hat = result.prev_sample, result.pred_original_sample
        assert prev.shape == shape and prev.dtype == dtype and x0_hat.shape == shape and x0_hat.dtype == dtype
        assert finite(prev, x0_hat), f"non-finite at step {k}, t={int(t)}"
        if k == check_at:
            # a [B] tensor of (different) chain timesteps gives the per-sample scalar results, bitwise
            t_batch = data.draw(st.lists(st.sampled_from(chain), min_size=batch, max_size=batch))
            batched = sched.step(out, torch.tensor(t_batch), x, variance_noise=z)
            for i, ti in enumerate(t_batch):
                single = sched.step(out[i : i + 1], ti, x[i : i + 1], variance_noise=z[i : i + 1])
                assert torch.equal(single.prev_sample, batched.prev_sample[i : i + 1])
                assert torch.equal(single.pred_original_sample, batched.pred_original_sample[i : i + 1])
            if full_chain and k < n - 1:
                # the sampling process is the T-step process: x_{t-1} = mu + sigma z, both from p_mean_variance
                p = sched.p_mean_variance(out, x, t, clip_denoised=processing != "none")
                quiet = sched.step(out, t, x, variance_noise=torch.zeros_like(z)).prev_sample
                assert torch.equal(quiet, p["mean"])
                sigma_z = torch.exp(0.5 * p["log_variance"]) * z
                assert bool(((prev - quiet - sigma_z).abs() <= 4 * EPS[dtype] * (quiet.abs() + sigma_z.abs())).all())
        last_in, last_out, last_z = x, out, z
        x = prev

    # The last step adds no noise, whatever the noise passed in...
    loud = sched.step(last_out, chain[-1], last_in, variance_noise=1e3 * last_z)
    assert torch.equal(loud.prev_sample, result.prev_sample)
    # ... and returns the posterior mean at the chain's first step, which is x0_hat: for the (respaced) chain,
    # beta'_0 = 1 - abar_{S_0} and coef1 = beta'_0 / (1 - abar'_0) = 1, coef2 = (1 - 1) ... = 0. In float64 the
    # table holds 1 - fl(1 - beta'_0) in the denominator, so coef1 = 1 only up to ~eps / beta'_0 (reported:
    # test_last_step_returns_pred_x0_exactly_in_float64); float32 rounds that coefficient to exactly 1.
    if dtype == torch.float32:
        assert torch.equal(result.prev_sample, result.pred_original_sample)
    else:
        first_beta = 1.0 - schedule.abar[chain[-1]]
        tol = 4 * EPS[dtype] / first_beta * result.pred_original_sample.abs()
        assert bool(((result.prev_sample - result.pred_original_sample).abs() <= tol).all())


# ---------------------------------------------------------------------------------------------- zero terminal SNR
@st.composite
def zero_terminal_schedules(draw):
    """`jsd` (beta_{T-1} = 1) or any schedule rescaled to zero terminal SNR: abar_{T-1} = 0 exactly."""
    if draw(st.booleans()):
        T = draw(st.integers(2, 300))
        return Schedule({"num_train_timesteps": T, "beta_schedule": "jsd"}, *_tables(make_beta_schedule("jsd", T)))
    schedule = draw(schedules(rescale=False, min_T=2))
    assume(schedule.abar[-2] > 0)  # see schedules()
    betas = rescale_zero_terminal_snr(torch.tensor(schedule.betas))
    return Schedule({**schedule.kwargs, "rescale_betas_zero_snr": True}, *_tables(betas))


@MEDIUM
@given(
    zero_terminal_schedules(),
    shapes(),
    st.sampled_from(DTYPES),
    st.sampled_from(PREDICTION_TYPES),
    st.sampled_from(VARIANCE_TYPES),
    st.data(),
)
def test_zero_terminal_snr_schedules(schedule, shape, dtype, prediction_type, variance_type, data):
    """At t = T-1 with abar = 0, x_t is pure noise. x0- and v-prediction stay well defined (v = -x0 there);
    eps-prediction cannot recover x0 (x0 = (x_t - eps) / 0): observed, it yields non-finite x0_hat and NaN mean,
    bound and step output, silently (no error). The test pins that down: either an error or a non-finite
    result, never a finite number that looks meaningful."""
    sched = schedule.make(prediction_type=prediction_type, variance_type=variance_type)
    last = schedule.T - 1
    x0 = data_x0(data.draw, shape, dtype, on_grid=True)
    noise = randn(data.draw, shape, dtype)
    mean, var, log_var = sched.q_mean_variance(x0, last)
    assert bool((mean == 0).all()) and bool((var == 1).all()) and bool((log_var == 0).all())  # abar_{T-1} = 0
    x_t = sched.q_sample(x0, last, noise)
    assert torch.equal(x_t, noise)
    assert bool((sched.prior_bpd(x0) == 0).all())  # KL(N(0, 1) || N(0, 1)) = 0 exactly
    post = sched.q_posterior_mean_variance(x0, x_t, last)
    beta = torch.tensor(schedule.betas[last], dtype=dtype)
    assert finite(*post) and bool(((post[1] > 0) & (post[1] <= beta)).all())

    target = {"epsilon": noise, "sample": x0, "v_prediction": -x0}[prediction_type]  # v = sqrt(0) eps - sqrt(1) x0
    out = model_output(data.draw, variance_type, target, dtype)
    try:
        p = sched.p_mean_variance(out, x_t, last, clip_denoised=data.draw(st.booleans()))
        vb = sched.vb_terms_bpd(out, x0, x_t, last, clip_denoised=False)["output"]
        losses = {k: sched.training_losses(out, x0, x_t, noise, last, loss_type=k)["loss"] for k in ("simple", "kl", "hybrid")}
        stepped = sched.step(out, last, x_t, variance_noise=torch.zeros_like(x_t))
    except ValueError:  # refusing eps-prediction at abar = 0 would be fine too
        assert prediction_type == "epsilon"
        event("eps at abar=0: ValueError")
        return
    if prediction_type == "epsilon":
        assert not finite(p["pred_x0"]) and not finite(vb) and not finite(stepped.prev_sample)
        event("eps at abar=0: non-finite x0_hat / bound / step, no error")
        assert finite(losses["simple"])  # the eps regression target itself is fine
    else:
        assert finite(*p.values(), vb, stepped.prev_sample, stepped.pred_original_sample, *losses.values())
        torch.testing.assert_close(sched.predict_x0(out, x_t, last), x0, rtol=0, atol=4 * EPS[dtype])


def test_zero_terminal_snr_needs_two_steps():
    """Rescaling a 1-step schedule is 0/0 (abar_0 is both the first and the last value): a ValueError."""
    with pytest.raises(ValueError):
        DDPMScheduler(num_train_timesteps=1, rescale_betas_zero_snr=True)


# ------------------------------------------------------------- regressions of bugs these properties found
@pytest.mark.parametrize("T, n", [(1000, 61), (1000, 103), (15, 13), (100, 29)])
def test_trailing_spacing_gives_n_distinct_steps_in_range(T, n):
    """set_timesteps(n) with timestep_spacing='trailing' should give n distinct timesteps in [0, T-1], ending
    at T-1. Stock diffusers' np.round(np.arange(T, 0, -T / n)) - 1 produces n + 1 values, the last one -1
    (float rounding leaves a tiny positive remainder), for 2330 of the 45150 pairs with T <= 300 and 62 values of
    n for T = 1000; hf_ddpm then raises 'timesteps must be distinct integers in [0, T-1] ... check steps_offset
    and the custom timesteps', which blames the user."""
    sched = DDPMScheduler(num_train_timesteps=T, timestep_spacing="trailing")
    sched.set_timesteps(n)
    chain = sched.timesteps.tolist()
    assert len(chain) == n and chain[0] == T - 1 and chain[-1] >= 0 and len(set(chain)) == n


def test_batched_step_rejects_negative_timesteps_like_scalar_step():
    """The scalar path raises ValueError for timestep -1; the [B] path clamps -1 to 0 for its membership check and
    then indexes the position table with -1 (Python negative indexing), i.e. silently steps from t = T-1 (on a
    respaced chain without T-1, position -1 indexes the last respaced coefficients). A [B] timestep T raises an
    IndexError instead of the scalar path's ValueError."""
    sched = DDPMScheduler(num_train_timesteps=10)
    x = torch.randn(1, 1, 2, 2)
    with pytest.raises(ValueError):
        sched.step(torch.randn_like(x), -1, x)  # scalar: rejected
    out = torch.randn_like(x)
    try:
        batched = sched.step(out, torch.tensor([-1]), x, variance_noise=torch.zeros_like(x)).prev_sample
    except ValueError:
        return
    from_last = sched.step(out, 9, x, variance_noise=torch.zeros_like(x)).prev_sample
    assert not torch.equal(batched, from_last), "timestep -1 was accepted and treated as t = T-1"


def test_thresholding_without_spatial_dims():
    """Every other method accepts [B, C] data; stock's _threshold_sample does reshape(B, C * np.prod([])) with
    np.prod([]) = 1.0, a float: TypeError (a bug inherited from stock, fixed in hf_ddpm's override). [B, C] data
    thresholds as [B, C, 1] data does."""
    sched = DDPMScheduler(num_train_timesteps=10, thresholding=True)
    x = 3 * torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    p = sched.p_mean_variance(torch.randn_like(x), x, 5)
    assert finite(*p.values())
    with_dim = sched.p_mean_variance(torch.zeros_like(x)[..., None], x[..., None], 5)
    torch.testing.assert_close(sched.p_mean_variance(torch.zeros_like(x), x, 5)["pred_x0"],
                               with_dim["pred_x0"][..., 0])


def test_last_step_returns_pred_x0_exactly_in_float64():
    """The last step returns the posterior mean at t = 0, coef1_0 x0_hat + 0 x_t with coef1_0 = beta_0 / (1 - abar_0)
    = 1 in exact arithmetic; the float64 table computes 1 - fl(1 - beta_0) != beta_0 (0.1: 1 + 2.2e-16; 1e-8:
    1 - 5e-9), so prev_sample != pred_original_sample. float32 rounds coef1 to 1 and is exact."""
    sched = DDPMScheduler(num_train_timesteps=3, trained_betas=[0.1, 0.1, 0.1])
    x = torch.randn(2, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = sched.step(torch.full_like(x, 0.1), 0, x)
    assert torch.equal(out.prev_sample, out.pred_original_sample)


def test_eps_prediction_finite_for_subnormal_abar_in_float64():
    """abar_{T-1} = 0.001^103 = 1e-309 > 0 (subnormal). sqrt(1/abar) = 3e154 is representable, but the table is
    built as (1 / abar).sqrt() and 1 / 1e-309 overflows to inf, so x0_hat = inf * x_t - inf * eps = NaN even with
    clipping; abar.rsqrt() would be finite. Extreme (SNR ~ -3090 dB), reported for completeness."""
    sched = DDPMScheduler(num_train_timesteps=103, trained_betas=[0.999] * 103)
    x = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    p = sched.p_mean_variance(0.5 * x, x, 102)  # x0_hat = inf * 1 - inf * 0.5 = NaN, NaN after clipping too
    assert finite(*p.values())
