"""Particle methods: SVGD and repulsive ensembles (``svgd.py``), the targets that give them
scores (``targets.py``), Stein kernels (``stein_kernels.py``) and score estimators such as
SSGE (``scores.py``)."""
