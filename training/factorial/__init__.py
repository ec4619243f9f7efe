"""The pre-registered IMTA factorial (docs/imta.md): launcher, evaluation, statistics, report."""
