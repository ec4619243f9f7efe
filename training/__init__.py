"""IMTA training, evaluation, calibration and export of multi-exit models (see README)."""
