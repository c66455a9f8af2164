"""Search-file distributions -> ``ray.tune`` search-space objects, through public constructors only.

Each distribution is the ``ray.tune`` function of the same name. ``loguniform`` with ``or_zero``
(log-uniform "including 0", for loss terms the search may switch off) is a ``tune.sample_from``
whose function draws exactly 0 with the given probability, else a log-uniform value.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
from ray import tune

from anomaly.tuning.spec import DISTRIBUTIONS, SearchSpec, check_spec


def or_zero(low: float, high: float, p: float, *, seed: int | None = None):
    """``tune.sample_from`` drawing 0 with probability ``p``, else log-uniformly in [low, high].

    The generator lives in the function's closure: Tune copies the search space for every
    sample but shares functions, so draws continue from one sample to the next (and repeat
    between searches with the same seed).
    """
    rng = np.random.default_rng(seed)
    log_low, log_high = math.log(low), math.log(high)

    def draw(_config) -> float:
        zero = rng.random() < p
        value = math.exp(rng.uniform(log_low, log_high))
        return 0.0 if zero else min(max(value, low), high)

    return tune.sample_from(draw)


def to_domain(name: str, spec: dict, *, where: str = "search config", seed: int | None = None):
    """One (validated) YAML spec -> the matching ``ray.tune`` search-space object."""
    spec = check_spec(name, spec, where)
    kind = next(key for key in spec if key in DISTRIBUTIONS)
    args = spec[kind]
    if kind == "choice":
        return tune.choice(args)
    if kind == "grid":
        return tune.grid_search(args)
    if "or_zero" in spec:
        # A per-key stream, so adding a searched key does not change another key's draws.
        key_seed = None if seed is None else [seed, zlib.crc32(name.encode())]
        return or_zero(args[0], args[1], spec["or_zero"], seed=key_seed)
    return getattr(tune, kind)(*args)


def param_space(spec: SearchSpec) -> dict[str, Any]:
    """Tune's ``param_space``: every TrainConfig key, fixed or a ``ray.tune`` domain."""
    space: dict[str, Any] = spec.base.to_dict()
    for name, entry in spec.search.items():
        space[name] = to_domain(name, entry, where=spec.source, seed=spec.tune.seed)
    return space
