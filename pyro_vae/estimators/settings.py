"""The estimators' settings and defaults, written once: every signature, the config and the CLI read them here.

* :class:`Settings`: the AIS sampler (and BDMC, which runs it both ways); its field
  defaults are the defaults of :func:`~pyro_vae.estimators.ais.ais`,
  :func:`~pyro_vae.estimators.bdmc.bdmc`, :func:`~pyro_vae.jobs.evaluate.evaluate_run`,
  :func:`~pyro_vae.jobs.family.family_table` and ``pyro-vae evaluate`` (e.g.
  ``steps: int = Settings.steps``);
* :data:`IS_SAMPLES`, :data:`K_LIST`: importance sampling's ``K`` and reported bounds;
* :data:`BATCH_SIZE`: points per batch of every estimator; :data:`BDMC_POINTS`: points
  simulated for BDMC.

This module imports nothing heavy (no torch), so ``pyro-vae --help`` can quote it.

Example:
    >>> Settings.steps, Settings.chains, K_LIST
    (100, 16, (1, 10, 100, 1000))
    >>> Settings(steps=10, chains=8).pilots
    2
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Settings", "SCHEDULES", "ADAPT_MODES", "INITS", "IS_SAMPLES", "K_LIST", "BATCH_SIZE", "BDMC_POINTS"]

SCHEDULES = ("sigmoid", "linear")  # annealing schedules, see pyro_vae.estimators.hmc.beta_schedule
ADAPT_MODES = ("pilot", "chain", "none")  # step-size adaptation, see pyro_vae.estimators.hmc.anneal
INITS = ("guide", "prior")  # AIS's q0

IS_SAMPLES = 1000  # importance samples K per point
K_LIST = (1, 10, 100, 1000)  # the IWAE bounds L_k reported
BATCH_SIZE = 100  # points per batch (importance sampling shrinks it to bound its weights' memory)
BDMC_POINTS = 50  # points simulated from the model for BDMC


@dataclass
class Settings:
    """The sampler settings shared by :func:`~pyro_vae.estimators.ais.ais` and :func:`~pyro_vae.estimators.bdmc.bdmc`.

    The field defaults are the package's defaults (see :func:`~pyro_vae.estimators.ais.ais`
    for what each means); ``pilots=None`` becomes ``max(1, chains // 4)`` with ``adapt="pilot"``.

    Example:
        >>> Settings(steps=10, chains=8).pilots
        2
    """

    steps: int = 100
    chains: int = 16
    leapfrog: int = 10
    schedule: str = "sigmoid"
    init: str = "guide"
    step_size: float = 0.05
    target_accept: float = 0.65
    adapt: str = "pilot"
    pilots: int | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "chains", "leapfrog"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name, allowed in (("schedule", SCHEDULES), ("init", INITS), ("adapt", ADAPT_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if not (self.step_size > 0 and 0 < self.target_accept < 1):
            raise ValueError(f"need step_size > 0 and 0 < target_accept < 1, got {self.step_size}, {self.target_accept}.")
        if self.adapt != "pilot":
            self.pilots = 0
        elif self.pilots is None:
            self.pilots = max(1, self.chains // 4)  # +25% of the work buys step sizes free of the chains' own paths
        elif self.pilots < 1:
            raise ValueError(f"adapt='pilot' needs pilots >= 1, got {self.pilots}.")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
