"""Helpers every load-test command shares: child processes, typha's status and metrics, host figures,
the synthetic-cluster bridge to the emulator, histograms and console output."""
