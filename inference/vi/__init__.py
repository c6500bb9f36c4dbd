"""Variational inference: mean-field VI (``vi.py``), its guide family (``guides.py``), ELBO
estimates (``elbo.py``), the local reparameterisation trick (``local_reparam.py``) over the
network's linear layers (``linear_layers.py``), learning-rate schedules and KL annealing
(``optim.py``; the optimisers themselves are in ``inference/optimizers.py``, shared with SVGD)
and the Pyro reference path (``pyro_engine.py``); ``sparse/`` holds sparse subspace VI."""
