"""Choose the training timesteps t: uniformly, or by importance sampling on the loss (Improved DDPM, Sec. 3.3).

Both samplers share one interface, so a training loop uses either without branching:

    sampler = LossSecondMomentSampler(num_timesteps=T)             # or UniformTimestepSampler(T)
    t, weights = sampler.sample(global_batch, generator=rng, device=device)
    losses = per_example_loss(t) * weights                          # weights = 1 / (T p_t): unbiased mean
    sampler.update(t, per_example_vlb.detach())                     # the gathered *global* batch
    state = sampler.state_dict()                                    # tensors only: safetensors-friendly

`update` must see the same (timesteps, losses) on every process (gather them first), so that every process keeps
the same history and, with the same generator, draws the same timesteps. Improved DDPM importance-samples the
L_vlb objective (`loss_type="kl"`); pass its per-example terms to `update`. The draws happen on the generator's
device (the CPU when there is none) and are then moved to `device`.
"""

from __future__ import annotations

import torch


class UniformTimestepSampler:
    """t ~ U{0, ..., T-1} with weight 1: the paper's sampler, drawn as `torch.randint(0, T, (B,), generator=...)`."""

    def __init__(self, num_timesteps: int):
        if not isinstance(num_timesteps, int) or num_timesteps < 1:
            raise ValueError(f"num_timesteps must be a positive integer (the diffusion's T), got {num_timesteps!r}.")
        self.num_timesteps = num_timesteps

    def probabilities(self) -> torch.Tensor:
        """p_t for t = 0..T-1 (float64, CPU)."""
        return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps [B] int64, weights [B] float32) on `device`; the weights 1 / (T p_t) keep the mean unbiased."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        draw_device = generator.device if generator is not None else torch.device("cpu")
        timesteps = torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=draw_device)
        return timesteps.to(device), torch.ones(batch_size, device=device)

    def update(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        """Uniform sampling ignores the losses; the method exists so that callers need not branch on the sampler."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(
                f"state has keys {sorted(state)}, but UniformTimestepSampler keeps no state: load it into the "
                "sampler that saved it (LossSecondMomentSampler)."
            )


class LossSecondMomentSampler(UniformTimestepSampler):
    """p_t proportional to sqrt(E[L_t^2]) over the last `history_per_term` losses seen at t, mixed with a uniform
    floor `uniform_prob` (improved-diffusion's `LossSecondMomentResampler`).

    Until every t has `history_per_term` losses it samples exactly as `UniformTimestepSampler` (same draws for
    the same generator), since a partial history would give a biased, noisy p.
    """

    def __init__(self, num_timesteps: int, history_per_term: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        if not isinstance(history_per_term, int) or history_per_term < 1:
            raise ValueError(f"history_per_term must be a positive integer, got {history_per_term!r}.")
        if not 0.0 < uniform_prob <= 1.0:
            # a zero floor would let p_t reach 0, and the weight 1 / (T p_t) blow up
            raise ValueError(f"uniform_prob must lie in (0, 1] (e.g. 0.001), got {uniform_prob!r}.")
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        # float64 on the CPU: the history is tiny, and the draws must not depend on the training device
        self.loss_history = torch.zeros(num_timesteps, history_per_term, dtype=torch.float64)
        self.loss_counts = torch.zeros(num_timesteps, dtype=torch.int64)

    @property
    def warmed_up(self) -> bool:
        """Whether every t has its full history, so that importance sampling is on."""
        return bool((self.loss_counts == self.history_per_term).all())

    def probabilities(self) -> torch.Tensor:
        if not self.warmed_up:
            return super().probabilities()
        weights = self.loss_history.pow(2).mean(dim=1).sqrt()
        weights = weights / weights.sum()
        return weights * (1.0 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.warmed_up:
            return super().sample(batch_size, generator, device)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        draw_device = generator.device if generator is not None else torch.device("cpu")
        probabilities = self.probabilities()
        timesteps = torch.multinomial(probabilities.to(draw_device), batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * probabilities[timesteps.cpu()])
        return timesteps.to(device), weights.to(device=device, dtype=torch.float32)

    def update(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        """Record one loss per example (in batch order) for its timestep; a full history drops its oldest value.

        This reads the values on the host (one synchronization per call).
        """
        timesteps, losses = torch.as_tensor(timesteps).flatten().cpu(), torch.as_tensor(losses).detach().flatten().cpu()
        if timesteps.shape != losses.shape:
            raise ValueError(
                f"timesteps and losses must have one entry per example, got {timesteps.numel()} and {losses.numel()}: "
                "pass per-example losses (reduction='none')."
            )
        if timesteps.dtype.is_floating_point or (timesteps < 0).any() or (timesteps >= self.num_timesteps).any():
            raise ValueError(f"timesteps must be integers in [0, {self.num_timesteps - 1}], got {timesteps.tolist()}.")
        if not torch.isfinite(losses).all():
            raise ValueError("losses must be finite: a NaN or Inf loss would poison the sampling probabilities.")
        full = self.history_per_term
        for t, loss in zip(timesteps.tolist(), losses.double().tolist()):
            count = int(self.loss_counts[t])
            if count == full:
                self.loss_history[t, :-1] = self.loss_history[t, 1:].clone()
                self.loss_history[t, -1] = loss
            else:
                self.loss_history[t, count] = loss
                self.loss_counts[t] = count + 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{"loss_history": [T, history_per_term] float64, "loss_counts": [T] int64}: copies, tensors only."""
        return {"loss_history": self.loss_history.clone(), "loss_counts": self.loss_counts.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = {"loss_history": tuple(self.loss_history.shape), "loss_counts": tuple(self.loss_counts.shape)}
        shapes = {key: tuple(torch.as_tensor(value).shape) for key, value in state.items()}
        if shapes != expected:
            raise ValueError(
                f"state has shapes {shapes}, but this sampler needs {expected}: build it with the num_timesteps and "
                "history_per_term of the run that saved the state."
            )
        counts = torch.as_tensor(state["loss_counts"]).to(torch.int64)
        if (counts < 0).any() or (counts > self.history_per_term).any():
            raise ValueError(f"state's loss_counts must lie in [0, {self.history_per_term}]: the state is damaged.")
        self.loss_history = torch.as_tensor(state["loss_history"]).to(torch.float64).clone()
        self.loss_counts = counts.clone()
