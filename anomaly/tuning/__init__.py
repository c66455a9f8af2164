"""Hyperparameter search with Ray Tune over the Ray Train trainer: YAML search spaces, ASHA, results.

- :mod:`.spec`: the search file (base / search / tune sections) and its validation;
- :mod:`.domains`: its distributions as ``ray.tune`` search-space objects;
- :mod:`.trial`: one trial (a Train run; its workers released when Tune stops it);
- :mod:`.results`: the trials table, the best trial's config, model and evaluation;
- :mod:`.driver`: :func:`run_search` (start or resume a search).
"""

from anomaly.tuning.domains import or_zero, param_space, to_domain
from anomaly.tuning.driver import EXPERIMENT, SearchInterrupted, default_max_concurrent, run_search
from anomaly.tuning.results import SearchResult, format_table, summarise, write_results
from anomaly.tuning.spec import (
    AshaSettings,
    SearchSpec,
    TuneSettings,
    describe_spec,
    load_search_spec,
    parse_search_spec,
)
from anomaly.tuning.trial import TIME_ATTR, TrialInputs, run_trial

__all__ = [
    "EXPERIMENT",
    "TIME_ATTR",
    "AshaSettings",
    "SearchInterrupted",
    "SearchResult",
    "SearchSpec",
    "TrialInputs",
    "TuneSettings",
    "default_max_concurrent",
    "describe_spec",
    "format_table",
    "load_search_spec",
    "param_space",
    "or_zero",
    "parse_search_spec",
    "run_search",
    "run_trial",
    "summarise",
    "to_domain",
    "write_results",
]
