"""The search's driver: Tune over Ray Train trials, resume, and the results written to ``OUT``."""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid

import ray

from anomaly import cluster, console, uris
from anomaly.cluster import DEFAULT_WAIT_SECONDS
from anomaly.config import read_yaml, write_yaml
from anomaly.errors import AnomalyError
from anomaly.tuning.domains import param_space
from anomaly.tuning.results import SearchResult, write_results
from anomaly.tuning.spec import SearchSpec, load_search_spec, parse_search_spec
from anomaly.tuning.trial import TIME_ATTR, ReleaseStoppedTrials, TrialInputs, run_trial, worker_groups

logger = logging.getLogger(__name__)

EXPERIMENT = "tune"  # Tune's experiment folder under OUT/ray_results
# A trial lost with its node (a spot worker reclaimed, say) is restarted this often; it resumes
# from its last Train checkpoint in OUT/trials/TRIAL_ID.
TRIAL_RETRIES = int(os.environ.get("ANOMALY_TUNE_TRIAL_RETRIES", "2"))
# A custom resource of the nodes spot reclaims never take away (cluster.yaml): where the cluster
# has it, each trial's driver asks for a little of it, so no trial driver runs on a spot node.
DRIVER_RESOURCE = "on_demand"
DRIVER_RESOURCE_SHARE = 0.01


def trial_resources(
    driver_cpus: float, num_workers: int, cpus_per_worker: float, use_gpu: bool
) -> dict[str, float]:
    """What each trial's driver (the function trainable) reserves; a one-worker trial trains in it,
    so it reserves the worker's CPUs (and GPU) instead."""
    resources = {"CPU": driver_cpus}
    if num_workers == 1:
        resources = {"CPU": cpus_per_worker, **({"GPU": 1.0} if use_gpu else {})}
    if ray.cluster_resources().get(DRIVER_RESOURCE):
        resources[DRIVER_RESOURCE] = DRIVER_RESOURCE_SHARE
    return resources


class SearchInterrupted(Exception):
    """The search stopped before every trial ended; ``--resume`` continues it."""


def default_max_concurrent(
    driver_cpus: float, num_workers: int, cpus_per_worker: float, use_gpu: bool
) -> int:
    """Trials that fit in the cluster now: each takes a driver plus its Train workers (a one-worker
    trial trains in its driver: the worker's CPUs only)."""
    resources = ray.cluster_resources()
    per_trial = cpus_per_worker if num_workers == 1 else driver_cpus + num_workers * cpus_per_worker
    fits = int(resources.get("CPU", 0) // per_trial) if per_trial > 0 else 1
    if use_gpu:
        fits = min(fits, int(resources.get("GPU", 0) // max(num_workers, 1)))
    return max(1, fits)


def _comparable(spec: SearchSpec) -> dict:
    """What must not change between a search and its resumption (the trial count is fixed by then)."""
    values = spec.to_dict()
    flexible = ("num_samples", "max_concurrent", "driver_cpus")
    values["tune"] = {k: v for k, v in values["tune"].items() if k not in flexible}
    return values


def run_search(
    store: str,
    out: str,
    spec: SearchSpec | None,
    *,
    num_workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    max_failures: int = 0,
    num_samples: int | None = None,
    max_concurrent: int | None = None,
    resume: bool = False,
    evaluate_best: bool = True,
    wait_for_resources: float = DEFAULT_WAIT_SECONDS,
) -> SearchResult:
    """Run (or resume) the search and write the table, best config, best model, its evaluation, plot.

    ``spec`` None: one trial of the defaults, or on ``resume`` the settings the search started with.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from anomaly.training import fit, prepare_folds, prepare_inputs
    from anomaly.training.driver import worker_bundles

    if uris.is_local(out):
        out = os.path.abspath(out)
    storage, filesystem = uris.ray_storage(uris.join(out, "ray_results"))
    experiment = uris.join(out, "ray_results", EXPERIMENT)
    experiment_path, _ = uris.ray_storage(experiment)
    saved_spec = uris.join(out, "search.yaml")
    started = tune.Tuner.can_restore(experiment_path, storage_filesystem=filesystem)
    if resume:
        if not started:
            raise AnomalyError(out, "no search to resume here (run without `resume` to start one)")
        previous = parse_search_spec(read_yaml(saved_spec), where=saved_spec)
        if spec is not None and _comparable(previous) != _comparable(spec):
            raise AnomalyError(
                spec.source, f"differs from the settings the search in {out} started with ({saved_spec})"
            )
        spec = previous
    elif started:
        raise AnomalyError(out, "already holds a search; pass `resume` to continue it or use a new `out`")
    spec = spec or load_search_spec(None)
    tune_settings = spec.tune
    if num_samples is not None:
        tune_settings = dataclasses.replace(tune_settings, num_samples=num_samples)
    if max_concurrent is not None:
        tune_settings = dataclasses.replace(tune_settings, max_concurrent=max_concurrent)
    spec = dataclasses.replace(spec, tune=tune_settings)
    if not resume:
        write_yaml(saved_spec, spec.to_dict())

    # Nodes for one trial's workers (the autoscaler asked), then the split and statistics once
    # for every trial (small; the bags stay in Ray's object store or go through Ray Data).
    cluster.wait_for_resources(
        worker_bundles(num_workers, cpus_per_worker, use_gpu), wait_for_resources, what="the search"
    )
    data, folds = None, ()
    if not tune_settings.cv_folds:
        data = prepare_inputs(store, spec.base)
    else:
        folds = prepare_folds(store, spec.base, tune_settings.cv_folds)
    registry_name = f"anomaly-tune-worker-groups-{uuid.uuid5(uuid.NAMESPACE_URL, experiment).hex}"
    registry = worker_groups(registry_name)
    inputs = TrialInputs(
        store=store,
        out=out,
        data=data,
        registry=registry,
        resources={
            "num_workers": num_workers,
            "use_gpu": use_gpu,
            "cpus_per_worker": cpus_per_worker,
            "max_failures": max_failures,
        },
        train_env={k: v for k, v in os.environ.items() if k.startswith("RAY_TRAIN_")},
        folds=folds,
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, inputs=inputs),
        trial_resources(tune_settings.driver_cpus, num_workers, cpus_per_worker, use_gpu),
    )
    fits = default_max_concurrent(tune_settings.driver_cpus, num_workers, cpus_per_worker, use_gpu)
    concurrent = tune_settings.max_concurrent or fits
    if concurrent > fits:
        logger.warning(
            "%d trials at a time, but the cluster holds %d now (each: a driver of %g CPU and %d workers "
            "of %g CPU%s); the others' workers wait for resources (or for the autoscaler)",
            concurrent,
            fits,
            tune_settings.driver_cpus,
            num_workers,
            cpus_per_worker,
            " and 1 GPU" if use_gpu else "",
        )
    if resume:
        logger.info("resuming the search in %s", experiment)
        tuner = tune.Tuner.restore(
            experiment_path, trainable=trainable, resume_errored=True, storage_filesystem=filesystem
        )
    else:
        scheduler = None
        if tune_settings.asha:
            scheduler = ASHAScheduler(
                time_attr=TIME_ATTR,
                max_t=spec.max_t,
                grace_period=tune_settings.asha.grace_period,
                reduction_factor=tune_settings.asha.reduction_factor,
            )
        logger.info(
            "searching %s with %d samples, %d at a time",
            spec.searched or "nothing",
            tune_settings.num_samples,
            concurrent,
        )
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                metric=tune_settings.metric,
                mode=tune_settings.mode,
                scheduler=scheduler,
                # The generator limits concurrency itself (max_concurrent_trials is ignored with it).
                search_alg=BasicVariantGenerator(random_state=tune_settings.seed, max_concurrent=concurrent),
                num_samples=tune_settings.num_samples,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=storage,
                storage_filesystem=filesystem,
                failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
                callbacks=[ReleaseStoppedTrials(registry_name)],
                verbose=1 if console.verbose() else 0,
            ),
        )
    result_grid = tuner.fit()
    unfinished = len(result_grid) - result_grid.num_terminated - result_grid.num_errors
    if unfinished:  # Tune returns after Ctrl+C (or SIGTERM) with its state saved
        raise SearchInterrupted(f"{unfinished} of {len(result_grid)} trials have not ended")

    def refit(config, run_dir: str) -> None:  # cross-validated: the best settings on every training video
        fit(
            store,
            run_dir,
            config,
            num_workers=num_workers,
            use_gpu=use_gpu,
            cpus_per_worker=cpus_per_worker,
            max_failures=max_failures,
            wait_for_resources=wait_for_resources,
        )

    return write_results(
        store,
        out,
        spec,
        result_grid,
        experiment,
        evaluate_best=evaluate_best,
        refit=refit if tune_settings.cv_folds else None,
    )
