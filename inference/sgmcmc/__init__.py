"""Stochastic-gradient MCMC: the SGHMC and SGLD samplers (``samplers.py``), their
learning-rate schedules (``schedules.py``) and preconditioners (``preconditioners.py``)."""
