"""Hamiltonian Monte Carlo: the HMC and NUTS backends and the parts of their engines.

``hmc.py`` and ``nuts.py`` hold the backends; the vectorised engine is ``integrators.py``
(leapfrog, the log density and its gradient), ``mass_matrix.py``, ``trajectory.py`` (HMC and
NUTS transitions), ``adaptation.py`` (step size and mass matrix in Stan's windows),
``robust.py`` (log densities that raise) and ``run.py`` (warmup and sampling);
``pyro_engine.py`` steps Pyro's kernels on Pyro's potential energy (the negative log density).
"""
