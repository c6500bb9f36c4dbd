"""Sparse subspace VI (SSVI): the backend (``ssvi.py``), its trainer and mask updates
(``trainer.py``), its masks (``masks.py``), its training cost (``cost.py``) and the
SparsePosterior that saves only the active coordinates (``posterior.py``)."""
