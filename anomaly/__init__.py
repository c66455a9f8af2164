"""Weakly supervised video anomaly detection (MIL, Sultani et al. 2018) on Ray."""

__version__ = "0.1.0"
