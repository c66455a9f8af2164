"""The MIL anomaly scorer of Sultani et al. (kept importable here; all heads live in :mod:`anomaly.heads`)."""

from anomaly.heads import MILScorer

__all__ = ["MILScorer"]
