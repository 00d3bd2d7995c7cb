"""MLflow wiring: Lightning's MLFlowLogger for runs, MlflowClient for parent runs of sweeps.

The default store is an embedded SQLite DB (results/mlruns.db) with artifacts under
results/mlartifacts; point ``tracking.tracking_uri`` at an MLflow server to scale out.

Every run records the process that owns it (see ``tracking.lifecycle``) and MLflow's system metrics
(``system/cpu_utilization_percentage``, memory, GPU with nvidia-ml-py installed) every
``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (default 10) while it is open.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from nar_bench.errors import NarBenchError
from nar_bench.tracking.lifecycle import (
    interrupted,
    live_workers,
    mark_dead_runs_killed,
    owner_alive,
    owner_tags,
    run_end_status,
    store_lock,
    this_process,
    worker_tag,
)
from nar_bench.tracking.names import (
    COMMIT_TAG,
    CONFIG_ARTIFACT,
    DEVICE_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    EXTRACTOR_TAG,
    PARADIGM_TAG,
    PARENT_TAG,
    PID_TAG,
    SWEEP_KEY_TAG,
)
from nar_bench.tracking.provenance import check_writable, device_description, git_commit
from nar_bench.tracking.store_schema import check_store_schema

log = logging.getLogger(__name__)



def origin_tags() -> dict[str, str]:
    return {COMMIT_TAG: git_commit(), DEVICE_TAG: device_description(), **owner_tags()}


def tracking_uri(tracking: DictConfig) -> str:
    """Relative sqlite paths are made absolute so runs land in the same DB from any directory."""
    uri = tracking.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith(("/", "file:")):
        db = Path(uri[len(prefix):]).resolve()
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise NarBenchError(f"cannot create the MLflow store '{db}': {err.strerror} ('{err.filename}'); set "
                                "tracking.tracking_uri to a writable place") from None
        return prefix + str(db)
    return uri


# what SQLite and the OS say when a store cannot take a write (a read-only file or folder, a full disk)
WRITE_FAILURES = ("readonly database", "disk is full", "disk i/o error", "unable to open database", "permission denied",
                  "read-only file system", "no space left")


@contextlib.contextmanager
def store_writes(uri: str) -> Iterator[None]:
    """A store that refuses a write (read-only, full) is one NarBenchError line; MLflow's own logged
    traceback of the database error is held back. Other MLflow errors pass unchanged."""
    db_log = logging.getLogger("mlflow.store.db.utils")
    level = db_log.level
    db_log.setLevel(logging.CRITICAL)
    try:
        yield
    except (MlflowException, OSError) as err:
        text = str(err).lower()
        if not any(failure in text for failure in WRITE_FAILURES):
            raise
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise NarBenchError(f"the MLflow store {uri} cannot be written ({first.strip()[:160]}); make it writable "
                            "and give its disk space, or set tracking.tracking_uri to another store") from None
    finally:
        db_log.setLevel(level)


def check_artifact_root(exp_location: str | None) -> None:
    """A local artifact folder that cannot be written fails before a run opens, not at its first artifact."""
    if exp_location and exp_location.startswith("file:"):
        from urllib.parse import unquote, urlparse

        check_writable(Path(unquote(urlparse(exp_location).path)), "tracking.artifact_location")


def artifact_location(tracking: DictConfig) -> str | None:
    loc = tracking.artifact_location
    if loc and "://" not in loc:
        return Path(loc).resolve().as_uri()
    return loc


_stores: set[str] = set()  # stores this process has opened (their schema exists)


def client(tracking: DictConfig) -> MlflowClient:
    """A client of the store; the first one of a process opens the store under a file lock, since
    opening a fresh SQLite store creates its schema, and two sweeps started at once would otherwise
    both do that ("table latest_metrics already exists")."""
    uri = tracking_uri(tracking)
    if uri not in _stores:
        with store_lock(uri):
            try:
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
            except MlflowException:
                check_store_schema(uri)  # a store of a newer MLflow: one line, not MLflow's advice to upgrade it
                raise
        _stores.add(uri)
    return MlflowClient(tracking_uri=uri)


def experiment_id(tracking: DictConfig) -> str:
    """The id of ``tracking.experiment``, created (with our artifact location) on first use, under the
    store's lock (two processes could otherwise both create it), and tagged as a model-training
    experiment if it is not tagged with a kind. On this process's first use of a store, runs left
    RUNNING by dead processes of this host are marked KILLED."""
    check_artifact_root(artifact_location(tracking))  # before the store is made: a refused run leaves none
    c = client(tracking)
    uri = tracking_uri(tracking)
    with store_lock(uri), store_writes(uri):
        exp = c.get_experiment_by_name(tracking.experiment)
        if exp is not None:  # made earlier, maybe with another artifact location
            check_artifact_root(exp.artifact_location)
        exp_id = exp.experiment_id if exp is not None else c.create_experiment(
            tracking.experiment, artifact_location=artifact_location(tracking),
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        if exp is not None and EXPERIMENT_KIND_TAG not in exp.tags:  # made by an older nar-bench or by hand
            c.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        mark_dead_runs_killed(c, uri)
    return exp_id


def system_metrics(run_id: str, uri: str, resumed: bool = False):
    """MLflow's system-metrics monitor for ``run_id``, started (None where it cannot run); a
    ``resumed`` run's system metrics continue after its last step instead of from step 0 again."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no start/stop line per run
        monitor = SystemMetricsMonitor(run_id, tracking_uri=uri, resume_logging=resumed)
    except Exception as err:  # psutil missing, unsupported platform: the run goes on without them
        log.warning("no system metrics for run %s: %s", run_id, err)
        return None
    monitor.start()
    return monitor


class RunLogger(MLFlowLogger):
    """MLFlowLogger whose run ends when the verb says so (:meth:`end`), not when Lightning finishes
    fitting: a run's evaluation and artifacts come after ``fit``, and a process killed there must not
    leave a FINISHED run without them. A fit that raises ends the run FAILED, or KILLED when a signal
    interrupted it. Records system metrics while the run is open.

    A resumed run (``make_logger(run_id=...)``) keeps its params and logs no metric at a step it
    already holds: training resumes from the last checkpoint, so the steps between it and the kill
    run again (to the same values, see ``nar_bench.lit.resumable``) and would be logged twice.

    A run's config (the ``cfg`` hyperparameter) is logged whole as one artifact, ``config.yaml``,
    with its paradigm and feature extractor as tags (what reports group by); as params, all of it,
    or only ``param_keys`` (a sweep's child: the settings its points differ in)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._monitor = None
        self._ended = False
        self._resumed_params: dict[str, str] | None = None  # a resumed run's params, logged when it started
        self._logged_until: dict[str, int] = {}  # a resumed run's last logged step per metric
        self.param_keys: Collection[str] | None = None  # flattened names ("cfg/model/paradigm") logged as params

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        """A resumed run keeps the params it was started with (MLflow params are immutable); new
        values of them (say, a raised trainer.max_steps) are left out with a warning."""
        from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

        params = _convert_params(params)
        if isinstance(params.get("cfg"), Mapping):
            self.log_config(params["cfg"])
        if self.param_keys is not None:
            params = {k: v for k, v in _flatten_dict(params).items() if k in self.param_keys}
            if not params:
                return None
        if self._resumed_params is None:
            return super().log_hyperparams(params)
        flat = _flatten_dict(_convert_params(params))
        changed = sorted(k for k, v in flat.items() if k in self._resumed_params and self._resumed_params[k] != str(v))
        if changed:
            log.warning("resumed run %s keeps its first values of %s", self.run_id, ", ".join(changed))
        new = {k: v for k, v in flat.items() if k not in self._resumed_params}
        if new:
            super().log_hyperparams(new)

    @rank_zero_only
    def log_metrics(self, metrics, step: int | None = None) -> None:
        if step is not None and self._logged_until:
            metrics = {k: v for k, v in metrics.items() if step > self._logged_until.get(k, -1)}
        if metrics:
            super().log_metrics(metrics, step)

    def log_config(self, cfg: Mapping) -> None:
        """``config.yaml`` (the resolved config) on the run, and the tags reports read from it."""
        if self.run_id is None:
            return
        self.experiment.log_text(self.run_id, OmegaConf.to_yaml(OmegaConf.create(dict(cfg))), CONFIG_ARTIFACT)
        self.experiment.set_tag(self.run_id, PARADIGM_TAG, str(cfg.get("model", {}).get("paradigm")))
        self.experiment.set_tag(self.run_id, EXTRACTOR_TAG, str(cfg.get("eval", {}).get("extractor")))

    def open(self) -> RunLogger:
        """Creates (or, with ``run_id``, attaches to) the run now and starts its system metrics."""
        if self.run_id is not None and self._monitor is None:  # rank 0 only: other ranks have no run
            self._monitor = system_metrics(self.run_id, self._tracking_uri, resumed=self._resumed_params is not None)
        return self

    def finalize(self, status: str = "success") -> None:
        if status != "success":  # Lightning reports an exception: "failed"
            self.end("KILLED" if interrupted() else "FAILED")

    def end(self, status: str = "FINISHED") -> None:
        """Ends the run (FINISHED, FAILED or KILLED) once; stops its system metrics first."""
        if self._ended or not self._initialized:
            return
        self._ended = True
        if self._monitor is not None:
            self._monitor.finish()
        super().finalize(status)


def make_logger(tracking: DictConfig, run_name: str | None = None, parent_run_id: str | None = None,
                tags: dict[str, str] | None = None, run_id: str | None = None,
                param_keys: Collection[str] | None = None) -> RunLogger:
    """A logger on a new run (a child of ``parent_run_id`` if given), or on the existing run
    ``run_id`` (resumed: set RUNNING again and owned by this process). ``param_keys``: the only
    flattened config settings logged as params (None: all; the whole config is in config.yaml)."""
    experiment_id(tracking)  # creates the experiment with our artifact location on first use
    tags = {**origin_tags(), **(tags or {})}
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    resumed, logged_until = None, {}
    if run_id and rank_zero_only.rank == 0:
        c = client(tracking)
        run = reopen(c, run_id, tags)
        resumed = run.data.params
        logged_until = last_steps(c, run)
    logger = RunLogger(
        experiment_name=tracking.experiment,
        run_name=run_name or tracking.run_name,
        tracking_uri=tracking_uri(tracking),
        artifact_location=artifact_location(tracking),
        tags=tags,
        run_id=run_id,
    )
    logger._resumed_params, logger._logged_until = resumed, logged_until
    logger.param_keys = param_keys
    with store_writes(tracking_uri(tracking)):
        return logger.open()


def last_steps(c: MlflowClient, run: Run) -> dict[str, int]:
    """{metric: the largest step it was logged at} of a run. MLflow keeps each metric's value at its
    largest step with the run (``RunData._metric_objs``, what MLflow's own system-metrics resume
    reads), which saves reading whole histories; a client without it reads them."""
    latest = getattr(run.data, "_metric_objs", None)
    if latest is not None:
        return {m.key: m.step for m in latest}
    return {key: max(m.step for m in c.get_metric_history(run.info.run_id, key)) for key in run.data.metrics}


def reopen(c: MlflowClient, run_id: str, tags: dict[str, str]) -> Run:
    """Marks an ended run RUNNING again, owned by this process (new host / pid tags); returns it."""
    c.update_run(run_id, status="RUNNING")
    for key, value in tags.items():
        c.set_tag(run_id, key, value)
    return c.get_run(run_id)


def create_run(c: MlflowClient, exp_id: str, run_name: str, tags: dict[str, str] | None = None) -> Run:
    """A run opened through the client (sweep parents, benchmark points), tagged like logger runs."""
    with store_writes(c.tracking_uri):
        return c.create_run(exp_id, run_name=run_name, tags={**origin_tags(), **(tags or {})})


def find_parent(c: MlflowClient, exp_id: str, name: str, key: str, join: bool = False) -> Run | None:
    """The newest parent run named ``name`` with sweep key ``key``; one that a live process holds
    open only with ``join`` (else a separate parent run is started)."""
    runs = c.search_runs([exp_id], f"tags.`{SWEEP_KEY_TAG}` = '{key}' and attributes.run_name = '{name}'",
                         order_by=["attributes.start_time DESC"], max_results=50)
    for run in runs:
        if PARENT_TAG in run.data.tags:
            continue
        if not join and run.info.status == "RUNNING" and owner_alive(run.data.tags):
            log.warning("sweep '%s' is running in process %s; starting a separate parent run", name,
                        run.data.tags.get(PID_TAG))
            continue
        return run
    return None


def unfinished_run(tracking: DictConfig, tag: str, value: str) -> Run | None:
    """The newest run tagged ``tag`` = ``value`` that ended KILLED or FAILED: an attempt of the same
    work, to continue in. Runs left RUNNING by dead processes of this host are marked KILLED first
    (``experiment_id``)."""
    exp_id = experiment_id(tracking)
    query = f"tags.`{tag}` = '{value}' and attributes.status != 'FINISHED' and attributes.status != 'RUNNING'"
    runs = client(tracking).search_runs([exp_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def child_runs(tracking: DictConfig, parent_run_id: str) -> list[Run]:
    """The child runs of ``parent_run_id``, oldest first."""
    c = client(tracking)
    run = c.get_run(parent_run_id)
    return c.search_runs([run.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                         order_by=["attributes.start_time ASC"], max_results=50000)


def _running_elsewhere(run: Run) -> bool:
    return run.info.status == "RUNNING" and (owner_alive(run.data.tags) or bool(live_workers(run.data.tags)))


@contextlib.contextmanager
def parent_run(tracking: DictConfig, name: str, params: dict | None = None, key: str | None = None,
               fresh: bool = False, join: bool = False) -> Iterator[str]:
    """Opens a parent run for a sweep; yields its id. With a sweep ``key``, the newest parent of the
    same name and key is reopened (a resumed sweep) unless ``fresh``; with ``join``, one that another
    live process is running is shared with it (``nar_bench.tracking.sharing``): this process adds a
    worker tag, and the run ends when its last live worker leaves. Ends FINISHED, FAILED if the
    sweep raises, KILLED if a signal stopped it. Under DDP only rank 0 opens it (other ranks yield "";
    their loggers log nothing)."""
    if rank_zero_only.rank != 0:
        yield ""
        return
    c = client(tracking)
    exp_id, uri = experiment_id(tracking), tracking_uri(tracking)
    with store_lock(uri):  # two sweeps started at once find (or make) the same parent run
        run = None if fresh or key is None else find_parent(c, exp_id, name, key, join)
        joined = run is not None and join and _running_elsewhere(run)
        if joined:
            print(f"nar-bench: joining sweep '{name}' running in parent run {run.info.run_id} (process "
                  f"{run.data.tags.get(PID_TAG)}): points it runs are not run twice", flush=True)
        elif run is not None:
            reopen(c, run.info.run_id, origin_tags())
            print(f"nar-bench: resuming sweep '{name}' in parent run {run.info.run_id}", flush=True)
        else:
            run = create_run(c, exp_id, name, tags={SWEEP_KEY_TAG: key} if key else None)
        if join:
            c.set_tag(run.info.run_id, worker_tag(), this_process())
    run_id = run.info.run_id
    for param, value in (params or {}).items():
        if param not in run.data.params:  # params are immutable; a resumed parent has them already
            c.log_param(run_id, param, value)
    # the process that opened it records them; a resumed parent continues after its last step
    monitor = None if joined else system_metrics(run_id, uri, resumed=run.info.status != "RUNNING")
    status = "FINISHED"
    try:
        yield run_id
    except BaseException as err:
        status = run_end_status(err)
        raise
    finally:
        if monitor is not None:
            monitor.finish()
        with store_lock(uri):  # the last worker to leave ends the run
            if join:
                c.delete_tag(run_id, worker_tag())
            others = live_workers(c.get_run(run_id).data.tags)
            if others:
                print(f"nar-bench: sweep '{name}' goes on in process(es) "
                      f"{', '.join(p.split(' ')[1] for p in others)}; they end its parent run", flush=True)
            else:
                c.set_terminated(run_id, status=status)


def log_artifact(logger, path: Path, subdir: str | None = None) -> None:
    """Logs a file to the MLflow run behind a Lightning MLFlowLogger (no-op for other loggers)."""
    run_id = getattr(logger, "run_id", None)
    if run_id is not None:
        logger.experiment.log_artifact(run_id, str(path), subdir)
