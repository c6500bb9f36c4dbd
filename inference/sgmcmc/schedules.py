r"""Step-size schedules of the stochastic-gradient samplers, and which steps they keep.

A schedule says, for every step ``k`` of a run: the factor on the learning rate, whether
Langevin noise is on, whether the state at the end of the step is kept as a draw, and whether
the step is still burn-in (when preconditioners may adapt).

* :class:`Constant`: ``burn_in`` steps, then a draw every ``thin`` steps.
* :class:`Cyclical` (Zhang et al. 2020, "Cyclical stochastic gradient MCMC"): cycles of
  ``cycle_length`` steps with the cosine step size

  .. math::
      \eta_k = \frac{\eta_0}{2}\Big[\cos\Big(\pi\,\frac{k \bmod L}{L}\Big) + 1\Big];

  each cycle explores first (a fraction ``explore``, without noise: SGD with momentum, which
  moves quickly to a new mode) and then samples (noise on); the last ``draws_per_cycle``
  states of the cycle, ``thin`` steps apart, are kept (one draw at each cycle's end by default,
  as Wenzel et al. 2020 and Fortuin et al. 2022 do).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

from bayesdl._checks import check_count, check_probability

__all__ = ["Constant", "Cyclical", "Schedule"]


class Schedule(ABC):
    """What a stochastic-gradient sampler does at each step."""

    @property
    @abstractmethod
    def total_steps(self) -> int:
        """Number of steps of the run."""

    @property
    @abstractmethod
    def burn_in(self) -> int:
        """Number of leading steps that are burn-in (no draws kept, preconditioners adapt)."""

    @property
    @abstractmethod
    def draws(self) -> int:
        """Number of draws kept."""

    @abstractmethod
    def lr_factor(self, step: int) -> float:
        """Multiplier of the base learning rate at ``step``."""

    def noise(self, step: int) -> bool:
        """Whether Langevin noise is injected at ``step``."""
        return True

    @abstractmethod
    def keep(self, step: int) -> bool:
        """Whether the state after ``step`` is kept as a draw."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """A constant step size: ``burn_in`` steps, then ``draws`` draws ``thin`` steps apart."""

    def __init__(self, burn_in: int = 1000, draws: int = 200, thin: int = 10) -> None:
        self._burn_in = check_count("burn_in", burn_in, minimum=0)
        self._draws = check_count("draws", draws)
        self.thin = check_count("thin", thin)

    @property
    def total_steps(self) -> int:
        return self._burn_in + self._draws * self.thin

    @property
    def burn_in(self) -> int:
        return self._burn_in

    @property
    def draws(self) -> int:
        return self._draws

    def lr_factor(self, step: int) -> float:
        return 1.0

    def keep(self, step: int) -> bool:
        after = step - self._burn_in + 1
        return after > 0 and after % self.thin == 0


class Cyclical(Schedule):
    """Cosine cycles with exploration and sampling stages (Zhang et al. 2020).

    Parameters
    ----------
    cycles
        Number of cycles.
    cycle_length
        Steps per cycle ``L``.
    explore
        Fraction of each cycle without noise, in [0, 1).
    draws_per_cycle
        States kept at the end of each cycle.
    thin
        Steps between the kept states of a cycle.
    burn_in_cycles
        Leading cycles whose draws are discarded.
    """

    def __init__(
        self,
        cycles: int,
        cycle_length: int,
        explore: float = 0.5,
        draws_per_cycle: int = 1,
        thin: int = 1,
        burn_in_cycles: int = 0,
    ) -> None:
        self.cycles = check_count("cycles", cycles)
        self.cycle_length = check_count("cycle_length", cycle_length)
        self.explore = check_probability("explore", explore, open_interval=False)
        if self.explore == 1.0:
            raise ValueError("explore: must be < 1 (a cycle needs a sampling stage)")
        self.draws_per_cycle = check_count("draws_per_cycle", draws_per_cycle)
        self.thin = check_count("thin", thin)
        self.burn_in_cycles = check_count("burn_in_cycles", burn_in_cycles, minimum=0)
        if self.burn_in_cycles >= self.cycles:
            raise ValueError(f"burn_in_cycles: must be < cycles={self.cycles}")
        sampling = self.cycle_length - math.ceil(self.explore * self.cycle_length)
        if (self.draws_per_cycle - 1) * self.thin >= sampling:
            raise ValueError(
                f"draws_per_cycle, thin: {draws_per_cycle} draws {thin} steps apart do not fit "
                f"in the sampling stage of {sampling} steps"
            )

    @property
    def total_steps(self) -> int:
        return self.cycles * self.cycle_length

    @property
    def burn_in(self) -> int:
        return self.burn_in_cycles * self.cycle_length

    @property
    def draws(self) -> int:
        return (self.cycles - self.burn_in_cycles) * self.draws_per_cycle

    def lr_factor(self, step: int) -> float:
        position = (step % self.cycle_length) / self.cycle_length
        return 0.5 * (math.cos(math.pi * position) + 1.0)

    def noise(self, step: int) -> bool:
        return (step % self.cycle_length) >= math.ceil(self.explore * self.cycle_length)

    def keep(self, step: int) -> bool:
        if step < self.burn_in:
            return False
        from_end = self.cycle_length - 1 - step % self.cycle_length
        return from_end % self.thin == 0 and from_end // self.thin < self.draws_per_cycle
