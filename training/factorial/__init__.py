"""The pre-registered IMTA factorial (docs/imta.md): evaluation, statistics, report.

Its runs are a plan of the ablation runner (``configs/imta/factorial.yaml``, trained by
``python -m training ablation run``); ``python -m training factorial evaluate|report`` scores
them and writes the results (:mod:`training.factorial.cli`).
"""
