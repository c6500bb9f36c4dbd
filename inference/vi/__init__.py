"""Variational inference: the mean-field VI backend (``vi.py``) and its steps over an explicit
State (``algorithm.py``, ``records.py``), the trainers of its two engines (``trainers.py``),
its guide family (``guides.py``), ELBO estimates (``elbo.py``) with their closed-form prior
terms (``closed_form.py``), the local reparameterisation trick (``local_reparam.py``) over the
network's linear layers (``linear_layers.py``), learning-rate schedules and KL annealing
(``optim.py``; the optimisers themselves are in ``inference/optimizers.py``, shared with SVGD),
the Pyro reference path (``pyro_engine.py``) and the sharing of minibatches over
``torch.distributed`` processes (``data_parallel.py``); ``sparse/`` holds sparse subspace
VI."""
