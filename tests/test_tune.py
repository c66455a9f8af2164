"""Ray Tune over Ray Train on the session's local Ray: the smoke search end to end, the YAML format."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import frame_auc_again
from ray import tune
from ray.tune.search import sample

from anomaly import cli
from anomaly.checkpoints import load_scorer
from anomaly.config import TrainConfig, load_train_config
from anomaly.errors import AnomalyError
from anomaly.synthetic.features import make_feature_store
from anomaly.tuning import load_search_spec, param_space, parse_search_spec, to_domain
from ray_jobs import tune as tune_job

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "tune_configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, ray_cluster):
    """The smoke search once for the module: 3 trials, 2 at a time, on ray.init(num_cpus=2)."""
    root = tmp_path_factory.mktemp("tune")
    store = str(root / "store")
    # A weak signal, so that trials differ and ASHA has something to cut.
    make_feature_store(store, num_train=40, num_test=16, feature_dim=16, signal=0.5, seed=1)
    out = root / "search"
    args = tune_job.get_args_parser().parse_args(
        ["--features", store, "--config", str(SMOKE), "--out", str(out), "--cpus-per-worker", "0.5"]
        + ["--max-failures", "0"]
    )
    assert tune_job.main(args) == 0
    with open(out / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return store, out, rows


def test_smoke_search_writes_table_best_config_model_and_plot(smoke):
    _, out, rows = smoke
    spec = load_search_spec(str(SMOKE))
    assert len(rows) == spec.tune.num_samples == 3
    assert set(rows[0]) >= {"trial_id", *spec.searched, "best_val_auc", "epochs", "status", "stopped_by"}
    assert all(row["status"] == "TERMINATED" for row in rows)
    aucs = [float(row["best_val_auc"]) for row in rows]
    assert aucs == sorted(aucs, reverse=True)  # best first
    best = load_train_config(str(out / "best_config.yaml"))  # what ray_jobs.train --config accepts
    assert set(yaml.safe_load((out / "best_config.yaml").read_text())) == set(TrainConfig().to_dict())
    for name in spec.searched:
        value = getattr(best, name)
        assert str(value) == rows[0][name] or float(rows[0][name]) == pytest.approx(float(value))
    model, payload = load_scorer(str(out / "best_run"))
    assert payload["config"] == best.to_dict() and payload["feature_dim"] == 16
    assert payload["metrics"]["val_auc"] == pytest.approx(aucs[0])
    assert (out / "best_run" / "history.csv").exists()
    metrics = json.loads((out / "best_eval" / "metrics.json").read_text())
    assert metrics["split"] == "test"
    assert metrics["frame_auc"] == pytest.approx(
        frame_auc_again(out / "best_eval", metrics["store"]), abs=1e-6
    )
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_asha_stopped_a_trial_early(smoke):
    _, _, rows = smoke
    max_t = load_search_spec(str(SMOKE)).max_t
    epochs = [int(row["epochs"]) for row in rows]
    assert max(epochs) == max_t  # the leader is never cut
    stopped = [row for row in rows if row["stopped_by"] == "asha"]
    assert stopped and all(int(row["epochs"]) < max_t for row in stopped), rows


def test_trials_log_loss_auc_and_lr_to_tensorboard(smoke):
    _, out, rows = smoke
    events = sorted((out / "ray_results").rglob("events.out.tfevents*"))
    assert len(events) >= len(rows)
    data = b"".join(path.read_bytes() for path in events)
    for tag in (b"ray/tune/val_auc", b"ray/tune/loss", b"ray/tune/lr"):
        assert tag in data


def test_resume_of_a_finished_search_rewrites_the_same_results(smoke):
    store, out, rows = smoke
    args = tune_job.get_args_parser().parse_args(
        ["--features", store, "--out", str(out), "--resume", "--max-failures", "0"]
    )
    assert tune_job.main(args) == 0
    with open(out / "trials.csv", newline="") as handle:
        again = list(csv.DictReader(handle))
    assert [row["trial_id"] for row in again] == [row["trial_id"] for row in rows]


def test_a_second_search_into_the_same_out_is_refused(smoke):
    store, out, _ = smoke
    args = tune_job.get_args_parser().parse_args(["--features", store, "--out", str(out)])
    with pytest.raises(AnomalyError, match="`resume`"):
        tune_job.main(args)


def test_resume_without_a_search_is_refused(smoke, tmp_path):
    store, _, _ = smoke
    args = tune_job.get_args_parser().parse_args(["--features", store, "--out", str(tmp_path), "--resume"])
    with pytest.raises(AnomalyError, match="no search to resume"):
        tune_job.main(args)


# --- choosing by cross-validation on the train split's video labels ---------------------------


def test_stratified_folds_cover_every_video_once_with_both_labels_in_each():
    from anomaly.training.data import stratified_folds

    labels = np.array([0] * 11 + [1] * 7)
    folds = stratified_folds(labels, 3, seed=4)
    joined = np.concatenate(folds)
    assert sorted(joined.tolist()) == list(range(len(labels)))  # disjoint and complete
    for fold in folds:
        assert 3 <= (labels[fold] == 0).sum() <= 4 and 2 <= (labels[fold] == 1).sum() <= 3
    assert [f.tolist() for f in stratified_folds(labels, 3, seed=4)] == [f.tolist() for f in folds]


def _rows(blocks) -> list[tuple]:
    import ray

    tables = ray.get(list(blocks))
    return sorted(
        tuple(np.asarray(f, dtype=np.float32).ravel().tolist()[:4])
        for t in tables
        for f in t.column("features").to_pylist()
    )


@pytest.mark.parametrize(("cache", "crops"), [(True, 1), (False, 1), (True, 3)])
def test_folds_from_one_read_equal_a_read_per_fold(ray_cluster, tmp_path, monkeypatch, cache, crops):
    """prepare_folds reads the store once for every fold; each fold must still be what a read of
    its own gives: its validation videos, counts, training-part statistics and bags (each crop of a
    ten-crop store a bag)."""
    from anomaly.training import data

    store = make_feature_store(
        str(tmp_path / "store"),
        num_train=30,
        num_test=4,
        feature_dim=8,
        signal=1.0,
        seed=6,
        rows_per_part=7,
        crops=crops,
    )
    config = TrainConfig(feature_norm="standardize", seed=3)
    monkeypatch.setattr(data, "CACHE_FRACTION", 1.0 if cache else 0.0)
    folds = data.prepare_folds(store, config, 3)
    ids, labels = data.train_labels(store)
    parts = data.stratified_folds(labels, 3, config.seed)
    assert [f.val_ids for f in folds] == [tuple(ids[i] for i in part) for part in parts]
    for fold in folds:
        alone = data.prepare_inputs(store, config, cache=cache, val_ids=list(fold.val_ids))
        assert (fold.num_abnormal, fold.num_normal) == (alone.num_abnormal, alone.num_normal)
        np.testing.assert_allclose(fold.mean, alone.mean, rtol=1e-9)
        np.testing.assert_allclose(fold.std, alone.std, rtol=1e-9)
        assert (fold.cached is not None) is cache and fold.crops == crops
        if cache:
            for name in ("abnormal", "normal"):
                assert _rows(fold.cached[name]) == _rows(alone.cached[name])
            val = sorted(
                vid for t in ray_cluster.get(fold.cached["val"]) for vid in t.column("video_id").to_pylist()
            )
            assert val == sorted(fold.val_ids)


def test_a_cross_validated_search_ranks_by_held_out_folds_and_refits_the_winner(ray_cluster, tmp_path):
    store = str(tmp_path / "store")
    make_feature_store(store, num_train=24, num_test=8, feature_dim=16, signal=1.0, seed=2)
    search = tmp_path / "cv.yaml"
    search.write_text(
        yaml.safe_dump(
            {
                "base": {"max_epochs": 3, "batch_size": 4},
                "search": {"loss": {"grid": ["sultani", "topk_bce"]}},
                "tune": {"cv_folds": 3, "max_concurrent": 2},
            }
        )
    )
    out = tmp_path / "search"
    args = tune_job.get_args_parser().parse_args(
        ["--features", store, "--config", str(search), "--out", str(out), "--cpus-per-worker", "0.5"]
    )
    assert tune_job.main(args) == 0
    with open(out / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["loss"] for row in rows) == ["sultani", "topk_bce"]
    assert all(row["stopped_by"] == "cross_validation" and row["epochs"] == "3" for row in rows)
    assert float(rows[0]["best_cv_auc"]) >= float(rows[1]["best_cv_auc"])  # best first
    for row in rows:  # each trial trained one model per fold, each with that fold held out
        folds = sorted(p.name for p in (out / "trials" / row["trial_id"]).iterdir())
        assert folds == ["fold0", "fold1", "fold2"]
        held_out = [
            len(load_scorer(str(out / "trials" / row["trial_id"] / fold))[1]["history"]) for fold in folds
        ]
        assert held_out == [3, 3, 3]
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["loss"] == rows[0]["loss"] and best["val_fraction"] == 0.0  # refitted on every video
    _, payload = load_scorer(str(out / "best_run"))
    assert payload["config"] == best and payload["epoch"] == 2
    assert json.loads((out / "best_eval" / "metrics.json").read_text())["frame_auc"] > 0.5


# --- the YAML format ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, message",
    [
        ({"base": {"lr": 0.1}, "serach": {}}, "unknown top-level keys: serach"),
        (
            {"search": {"learning_rate": {"loguniform": [1e-4, 1e-2]}}},
            "unknown keys in search: learning_rate",
        ),
        ({"search": {"lr": {"log_uniform": [1e-4, 1e-2]}}}, "unknown keys in search.lr: log_uniform"),
        ({"tune": {"num_trials": 4}}, "unknown keys in tune: num_trials"),
        ({"tune": {"asha": {"max_epochs": 4}}}, "unknown keys in tune.asha: max_epochs"),
        ({"base": {"drop": 0.5}}, "unknown config keys: drop"),
        ({"lr": 0.1, "search": {}}, "unknown top-level keys: lr"),
        ({"lr": 0.1, "epochs": 3}, "unknown config keys: epochs"),
        ({"search": {"lr": {"loguniform": [0, 1e-2]}}}, "or_zero"),
        ({"search": {"lr": {"uniform": [1e-2]}}}, "expected 2 numbers"),
        ({"search": {"loss": {"choice": ["sultani", "hinge"]}}}, "'hinge' is not allowed"),
        ({"search": {"dropout": {"uniform": [0.0, 1.0]}}}, "1.0 is not allowed"),
        ({"search": {"seed": {"randint": [0, 5]}}}, "cannot be searched"),
        ({"base": {"lr": 0.1}, "search": {"lr": {"uniform": [0.1, 0.2]}}}, "both fixed in base and searched"),
        ({"search": {"lr": {"uniform": [0.1, 0.2], "or_zero": True}}}, "or_zero goes with loguniform"),
        ({"search": {"lr": 0.1}}, "expected a mapping"),
        ({"base": {"max_epochs": 5}, "tune": {"asha": {"max_t": 10}}}, "more than the base max_epochs"),
        ({"tune": {"metric": "test_auc"}}, "tune.metric"),
        ({"tune": {"cv_folds": 1}}, "cv_folds: must be an integer >= 2"),
        ({"tune": {"cv_folds": 3, "asha": {"grace_period": 1}}}, "set asha: false with cv_folds"),
        ({"tune": {"cv_folds": 3, "metric": "val_auc"}}, "cv_folds ranks trials by cv_auc"),
        ({"tune": {"metric": "cv_auc"}}, "cv_auc needs tune.cv_folds"),
    ],
)
def test_bad_search_files_are_one_line_errors(values, message):
    with pytest.raises(AnomalyError, match=message) as info:
        parse_search_spec(values, where="s.yaml")
    assert "\n" not in str(info.value) and str(info.value).startswith("s.yaml")


def test_a_bad_search_file_ends_the_command_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"search": {"lr": {"loguniform": [1e-4, 1e-2]}}, "tuning": {}}))
    with pytest.raises(SystemExit) as exit_info:
        cli.run(
            tune_job.main,
            tune_job.get_args_parser(),
            ["--features", str(tmp_path / "store"), "--config", str(path), "--out", str(tmp_path / "o")],
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}") and "tuning" in err and "\n" not in err


@pytest.mark.parametrize(
    "spec, domain_type, sampler_type",
    [
        ({"uniform": [0.0, 0.7]}, sample.Float, sample.Float._Uniform),  # noqa: SLF001 - Tune's samplers have no public name
        ({"loguniform": [1e-4, 1e-2]}, sample.Float, sample.Float._LogUniform),  # noqa: SLF001 - Tune's samplers have no public name
        ({"quniform": [0.0, 0.6, 0.1]}, sample.Float, sample.Quantized),
        ({"qloguniform": [1e-4, 1e-2, 1e-4]}, sample.Float, sample.Quantized),
        ({"randint": [1, 9]}, sample.Integer, sample.Integer._Uniform),  # noqa: SLF001 - Tune's samplers have no public name
        ({"qrandint": [8, 64, 8]}, sample.Integer, sample.Quantized),
        ({"lograndint": [8, 128]}, sample.Integer, sample.Integer._LogUniform),  # noqa: SLF001 - Tune's samplers have no public name
        ({"choice": ["sultani", "topk"]}, sample.Categorical, sample.Categorical._Uniform),  # noqa: SLF001 - Tune's samplers have no public name
    ],
)
def test_each_spec_maps_to_its_ray_tune_domain(spec, domain_type, sampler_type):
    domain = to_domain("x", spec)
    assert isinstance(domain, domain_type)
    assert isinstance(domain.get_sampler(), sampler_type)
    kind = next(iter(spec))
    if kind == "choice":
        assert domain.categories == tune.choice(spec[kind]).categories
    else:
        reference = getattr(tune, kind)(*spec[kind])  # the same call made by hand
        assert (domain.lower, domain.upper) == (reference.lower, reference.upper)
        assert type(domain.get_sampler()) is type(reference.get_sampler())


def test_or_zero_is_a_public_sample_from():
    domain = to_domain("lambda_sparse", {"loguniform": [1e-6, 1e-2], "or_zero": True}, seed=0)
    assert isinstance(domain, type(tune.sample_from(lambda _: 0.0)))


def test_grid_maps_to_grid_search():
    assert to_domain("loss", {"grid": ["sultani", "topk"]}) == tune.grid_search(["sultani", "topk"])


def _draws(domain, count: int) -> np.ndarray:
    """What Tune's own variant generator draws for ``x`` over ``count`` samples."""
    from ray.tune.search import BasicVariantGenerator

    def trainable(config):
        pass

    generator = BasicVariantGenerator(random_state=0)
    generator.add_configurations({"draws": {"run": trainable, "config": {"x": domain}, "num_samples": count}})
    values = []
    while (trial := generator.next_trial()) is not None:
        values.append(trial.config["x"])
    return np.array(values)


def test_or_zero_draws_zeros_and_log_uniform_values():
    values = _draws(to_domain("lambda_sparse", {"loguniform": [1e-6, 1e-2], "or_zero": 0.3}, seed=0), 1000)
    assert len(values) == 1000
    zeros = values == 0
    assert 0.25 < zeros.mean() < 0.35
    rest = values[~zeros]
    assert rest.min() >= 1e-6 and rest.max() <= 1e-2
    assert 0.4 < (np.log10(rest) < -4).mean() < 0.6  # log-uniform: half the draws below the middle decade
    # The same seed, the same draws; another seed, others.
    again = _draws(to_domain("lambda_sparse", {"loguniform": [1e-6, 1e-2], "or_zero": 0.3}, seed=0), 50)
    other = _draws(to_domain("lambda_sparse", {"loguniform": [1e-6, 1e-2], "or_zero": 0.3}, seed=1), 50)
    assert np.array_equal(again, values[:50]) and not np.array_equal(other, values[:50])


def test_default_yaml_is_a_single_trial_of_the_defaults():
    spec = load_search_spec(str(REPO / "tune_configs" / "default.yaml"))
    assert spec.base == TrainConfig() and spec.search == {} and spec.tune.num_samples == 1
    assert param_space(spec) == TrainConfig().to_dict()


def test_shipped_search_files_parse():
    full = load_search_spec(str(REPO / "tune_configs" / "search_mil.yaml"))
    assert {"lr", "lambda_smooth", "lambda_sparse", "loss", "topk", "dropout", "batch_size"} <= set(
        full.searched
    )
    assert full.search["lambda_sparse"].get("or_zero") and full.tune.asha is not None
    smoke = load_search_spec(str(SMOKE))
    assert 2 <= smoke.tune.num_samples <= 4 and smoke.base.max_epochs <= 5
