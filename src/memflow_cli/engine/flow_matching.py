"""Flow-matching schedule of the distilled model: shift-5 sigma table, warped 4-step list, x0 and re-noising.

All look-ups happen on the host with Python floats: the step list is fixed for a run, so no device value
ever has to be read back (no host-device sync per step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_STEPS = (1000, 750, 500, 250)


@dataclass(frozen=True)
class FlowMatchSchedule:
    shift: float = 5.0
    num_train_timesteps: int = 1000

    def table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps, sigmas), float32 [num_train_timesteps]: index 0 -> t=1000, the last -> t≈4.98."""
        n = self.num_train_timesteps
        raw = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float32)[:-1]
        sigmas = self.shift * raw / (1 + (self.shift - 1) * raw)
        return sigmas * n, sigmas

    def warped_timesteps(self, steps=DEFAULT_STEPS, warp: bool = True) -> list[float]:
        """The timesteps fed to the model: the step list looked up in the shifted table (with 0 appended)."""
        if not warp:
            return [float(s) for s in steps]
        timesteps, _ = self.table()
        extended = torch.cat([timesteps, torch.zeros(1)])
        n = self.num_train_timesteps
        for s in steps:
            if not 0 <= s <= n:
                raise ValueError(f"denoising step {s} outside 0..{n}")
        return [float(extended[n - int(s)]) for s in steps]

    def timestep_for_sigma(self, sigma: float) -> float:
        """The timestep whose sigma is `sigma`: the table's relation t = sigma * 1000, in float32."""
        return float(torch.tensor(sigma, dtype=torch.float32) * self.num_train_timesteps)

    def sigma(self, timestep: float) -> float:
        """Sigma of the table entry whose timestep is nearest to `timestep` (t=0 -> the last entry)."""
        timesteps, sigmas = self.table()
        index = int(torch.argmin((timesteps.double() - float(timestep)).abs()))
        return float(sigmas[index])


def flow_to_x0(x_t: torch.Tensor, flow: torch.Tensor, sigma: float) -> torch.Tensor:
    """x0 = x_t - sigma * v, in float64, returned in x_t's dtype."""
    return (x_t.double() - sigma * flow.double()).to(x_t.dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """(1 - sigma) * x0 + sigma * noise, computed in float32 (sigma is a float32 value), in noise's dtype.

    The factors stay Python floats (no device tensor, so no host-to-device copy per step). Both are
    float32-exact: 1 - sigma of a float32 sigma is computed exactly in double and rounds like float32.
    """
    keep = float(torch.tensor(1.0 - sigma, dtype=torch.float32))
    return (keep * x0.float() + sigma * noise.float()).to(noise.dtype)
