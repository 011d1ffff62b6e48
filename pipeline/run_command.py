"""`triplet-tfx run`: the pipeline on this machine (TFX's LocalDagRunner, Beam's in-process
FnApiRunner), after pre-flight checks of the data source and the folders; its exit codes."""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Tuple

from triplet_tfx.components.config import PipelineConfig
from triplet_tfx.components.signals import ResentWhenDropped
from triplet_tfx.pipeline import terminal

if TYPE_CHECKING:
    from triplet_tfx.pipeline import summary

OUTPUT_MARKER = "triplet-tfx-output.json"
EXIT_NOT_BLESSED = 3  # `run --require-blessed`
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM, as shells report SIGINT
logger = logging.getLogger(__name__)


class OutputRootError(RuntimeError):
    pass


class RunInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM stopped the run; its unfinished executions are marked cancelled."""


class PipelineRunError(RuntimeError):
    """A component failed; `summary` describes the run up to there."""

    def __init__(self, cause: Exception, summary: "Optional[summary.RunSummary]"):
        super().__init__(f"the run failed: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}")
        self.summary = summary


def claim_output_root(config: PipelineConfig) -> None:
    """Refuses an output root that holds something else; marks it as this pipeline's."""
    root = config.output_root
    marker = os.path.join(root, OUTPUT_MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            owner = json.load(f).get("pipeline_name")
        if owner != config.pipeline_name:
            raise OutputRootError(
                f"--output-root {root} holds the runs of pipeline {owner!r} ({marker}); "
                f"use --pipeline-name {owner} to continue it, or another --output-root"
            )
        return
    if os.path.isdir(root) and os.listdir(root):
        raise OutputRootError(
            f"--output-root {root} is not empty and was not written by triplet-tfx "
            f"(no {OUTPUT_MARKER}); choose an empty or new folder"
        )
    os.makedirs(root, exist_ok=True)
    with open(marker, "w") as f:
        json.dump({"pipeline_name": config.pipeline_name}, f)


def check_writable(path: str, flag: str) -> None:
    """Fails (naming the flag) unless `path` is, or can be made, a folder this process can write in."""
    if "://" in path:
        return  # remote: checked where it is written
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputRootError(f"{flag} {path}: {existing} is a file, not a folder")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise OutputRootError(f"{flag} {path}: cannot write in {existing} ({err.strerror})") from None


@contextlib.contextmanager
def long_lived_imports() -> Iterator[None]:
    """Imports TensorFlow, TFX and Beam with the garbage collector off, then freezes what they made.
    Their ~800k objects live as long as the process; each full collection walks them all (0.05-0.6 s
    each, ten in a short run) while they are tracked. Reference counting still frees frozen objects,
    but not cycles: only imports belong inside. `run_locally` unfreezes everything when the run ends."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def preflight(config: PipelineConfig, verbose: bool, training_data: bool = True) -> str:
    """Checks the source and the folders before anything is created, and sets TensorFlow's threads
    for the Trainer's batch parts before TensorFlow's first op; returns what was logged meanwhile.
    Both import TensorFlow, whose native start-up lines belong in the run's log file, which does not
    exist yet: they go to a scratch log, returned for the real one."""
    with tempfile.TemporaryDirectory() as scratch:
        scratch_log = os.path.join(scratch, "preflight.log")
        with terminal.logged_to_file(scratch_log, verbose):
            with long_lived_imports():  # the imports alone: a backbone's weights checked below are garbage after
                from triplet_tfx.components.data.data_sources import catalog_data, check_source, start_loading_mnist
                from triplet_tfx.components.serving import serving_folder
                from triplet_tfx.components.training import batch_parts, distribute
                from triplet_tfx.components.training.backbones import BackboneWeightsError, check_backbone_weights

            if training_data and not config.serving.catalog:
                # The Trainer trains in this process: TensorFlow's threads for its batch parts, set before
                # the first op. (A --catalog run also embeds its catalog here, with all the cores per op.)
                tf_config = distribute.parse_tf_config(os.environ.get("TF_CONFIG"))
                batch_parts.parts_in_this_process(config.train, distribute.chosen_strategy(config.train, tf_config))
            if training_data:  # not for an index refresh, which reads the catalog alone
                check_source(config.data)  # before TFX loads
                if config.data.source_kind == "mnist":
                    start_loading_mnist()  # for the ExampleGen, beside the imports still to come
            if config.serving.catalog:
                check_source(catalog_data(config.data, config.serving.catalog))
            try:  # --backbone-weights: ImageNet weights cached or downloadable now, or a file that loads
                check_backbone_weights(config.train, config.data.image_shape)
            except BackboneWeightsError as err:  # one line, as the other pre-flight errors
                raise OutputRootError(str(err)) from None
            check_writable(config.output_root, "--output-root")
            check_writable(config.serving_model_dir, "--serving-dir" if config.serving_dir else "--output-root")
            for line in serving_folder.clean_serving_folder(config.serving_model_dir):
                logger.warning("Serving folder: %s", line)  # the terminal too: a model server may have noticed
            if "://" not in config.serving_model_dir:
                try:
                    serving_folder.check_free_space(
                        config.serving_model_dir, serving_folder.expected_model_bytes(config.serving_model_dir)
                    )
                except serving_folder.NoSpaceError as err:
                    raise OutputRootError(
                        f"{'--serving-dir' if config.serving_dir else '--output-root'} "
                        f"{err.filename}: {err.strerror} (the newest version's size)"
                    ) from None
        with open(scratch_log, encoding="utf-8") as f:
            return f.read()


def run_locally(
    config: PipelineConfig, verbose: bool = True, data_only: bool = False, served_model: Optional[str] = None
) -> "Optional[summary.RunSummary]":
    """Runs the pipeline with TFX's LocalDagRunner (Beam, SQLite ML Metadata), holding the output
    root's run lock and logging everything into a new log file in the output root (see `terminal`);
    returns the summary of this run (None if it reached no component). data_only: its data
    components alone (ExampleGen through Transform, no training). served_model: a pushed version
    folder; runs the index pipeline instead (pipeline.create_index_pipeline: its --catalog indexed
    anew with that model)."""
    try:
        with contextlib.ExitStack() as standing_by:
            if served_model is None and not data_only and config.eval.plot == "umap":
                # The evaluator's UMAP process, started now: it imports its libraries on a core that
                # start-up and the data components leave idle.
                from triplet_tfx.components.evaluation.plots import plot_process_on_standby

                standing_by.enter_context(plot_process_on_standby())
            return _run_pipeline(config, verbose, data_only, served_model)
    finally:
        gc.unfreeze()  # what the imports froze goes back to the collector (tests run many pipelines in one process)


def _run_pipeline(
    config: PipelineConfig, verbose: bool, data_only: bool, served_model: Optional[str]
) -> "Optional[summary.RunSummary]":
    from triplet_tfx.pipeline.run_lock import RunLock

    pipeline_config = config
    if served_model is not None:
        with long_lived_imports():
            from triplet_tfx.pipeline.pipeline import index_config

        pipeline_config = index_config(config, served_model)
    preflight_lines = preflight(pipeline_config, verbose, training_data=served_model is None)
    claim_output_root(config)
    with RunLock(config.output_root):
        log_path = terminal.new_log_path(config.output_root)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(preflight_lines)
        logger.info("Log file: %s", log_path)
        failure = None
        try:
            with terminal.logged_to_file(log_path, verbose):
                # Imported here, so that TensorFlow's native start-up lines land in the log file.
                with long_lived_imports():
                    from triplet_tfx.pipeline import (
                        recovery,
                        summary,
                        tfx_api,  # tfx.v1's names, without its extensions
                    )
                    from triplet_tfx.pipeline.pipeline import create_index_pipeline, create_pipeline

                interrupted = recovery.mark_interrupted_runs(pipeline_config)
                before = summary.latest_context_id(pipeline_config)
                os.makedirs(os.path.dirname(pipeline_config.metadata_path), exist_ok=True)
                connection = tfx_api.orchestration.metadata.sqlite_metadata_connection_config(
                    pipeline_config.metadata_path
                )
                try:
                    tfx_api.orchestration.LocalDagRunner().run(
                        create_pipeline(config, connection, data_only=data_only)
                        if served_model is None
                        else create_index_pipeline(config, served_model, connection)
                    )
                except Exception as err:  # a component failed: its run's summary still tells what happened
                    failure = err
                except KeyboardInterrupt:  # Ctrl-C or SIGTERM (see run_command)
                    stopped = recovery.mark_cancelled(pipeline_config)
                    where = ", ".join(sorted({s.component for s in stopped})) or "the start"
                    logger.debug("Interrupted", exc_info=True)  # the traceback: log file only
                    raise RunInterrupted(
                        f"interrupted at {where}; run the same command again to resume (finished components "
                        "come from the cache, the Trainer from its last backup)"
                    ) from None
                result = summary.latest_run(pipeline_config, after_context_id=before)
        except RunInterrupted:
            logger.info("The run's log file: %s", log_path)
            raise
        except BaseException:
            logger.error("The run failed; its log file: %s", log_path)
            raise
    if result is not None:
        result.interrupted = [found.describe() for found in interrupted]
        result.log_path = log_path
    if failure is not None:
        logger.error("The run failed; its log file: %s", log_path)
        raise PipelineRunError(failure, result) from failure
    return result


def _data_source_error() -> "type[Exception]":
    # Imported late: data_sources imports TensorFlow, whose start-up lines belong in the log file.
    from triplet_tfx.components.data.data_sources import DataSourceError

    return DataSourceError


def disk_full(error: BaseException, config: PipelineConfig) -> Optional[str]:
    """One line for a run that ran out of disk space, naming where and how much is free; None for
    other errors. The space may run out in a component's own write (ENOSPC, with the file) or in
    ML Metadata's (SQLite's "database or disk is full", which then hides the first one)."""
    chain: list = []
    link: Optional[BaseException] = error
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    no_space = [e for e in chain if isinstance(e, OSError) and e.errno == errno.ENOSPC]
    if no_space:
        where = no_space[-1].filename or config.output_root  # the first to run out
    elif any("database or disk is full" in str(e) for e in chain):
        where = config.metadata_path
    else:
        return None
    existing = str(where)
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing or ".").free
    return (
        f"no space left on device writing {where} ({free / 1e6:.1f} MB free there); free some space, "
        "then run the same command again to resume"
    )


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM (what Kubernetes and CI send) stop the run cleanly: the first raises
    KeyboardInterrupt in this thread (run_locally marks the run cancelled and releases the lock);
    a second one exits at once. A first signal whose KeyboardInterrupt Python drops (raised inside a
    weakref callback or a __del__ method) is sent again (`signals.ResentWhenDropped`)."""
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.getsignal(number) for number in signals}

    def exit_now(number, _frame):
        os._exit(128 + number)

    def interrupt(number, _frame):
        resent.received(number)
        for each in signals:
            signal.signal(each, exit_now)
        raise KeyboardInterrupt

    def arm() -> None:
        for each in signals:
            signal.signal(each, interrupt)

    resent = ResentWhenDropped((KeyboardInterrupt,), rearm=arm)
    arm()
    try:
        with resent:
            yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run_command(args: argparse.Namespace, config: PipelineConfig) -> int:
    code, result = run_and_report(config, args.verbose)
    if code == 0 and args.require_blessed and not (result is not None and result.blessed):
        return EXIT_NOT_BLESSED
    return code


def run_and_report(
    config: PipelineConfig, verbose: bool, served_model: Optional[str] = None
) -> "Tuple[int, Optional[summary.RunSummary]]":
    """`run_locally` on the terminal: the run's summary, or one line naming what went wrong; returns
    (exit code, summary)."""
    terminal.setup_logging(verbose)
    logger.info("Beam arguments of the data components: %s", " ".join(config.data_beam_args))
    from triplet_tfx.pipeline.run_lock import RunLockError

    try:
        with _interruptible():
            result = run_locally(config, verbose, served_model=served_model)
    except RunInterrupted as err:
        print(f"triplet-tfx: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED, None
    except (OutputRootError, RunLockError, _data_source_error()) as err:  # evaluated only on an error
        print(f"triplet-tfx: error: {err}", file=sys.stderr)
        return 2, None
    except PipelineRunError as err:
        if err.summary is not None:
            print("\n" + err.summary.format())
        full = disk_full(err, config)
        print(f"triplet-tfx: error: {full or err} (the log above has the details)", file=sys.stderr)
        return (2 if isinstance(err.__cause__, _data_source_error()) else 1), err.summary
    if result is not None:
        print("\n" + result.format())
    return 0, result


def add_command(commands, add_config_flags: Callable[[argparse.ArgumentParser], Any]) -> None:
    """Adds `run` to the CLI's sub-parsers."""
    run = commands.add_parser(
        "run",
        help="run the whole pipeline locally (LocalDagRunner, Beam FnApiRunner)",
        description="Run ExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator "
        "-> Transform -> Trainer -> EmbeddingEvaluator -> Pusher locally.",
    )
    add_config_flags(run)
    run.add_argument(
        "--verbose",
        action="store_true",
        help="show on the terminal everything TFX, Beam and TensorFlow log (by default it goes "
        "only to the run's log file, <output-root>/logs/run-<time>.log)",
    )
    run.add_argument(
        "--require-blessed",
        action="store_true",
        help=f"exit with code {EXIT_NOT_BLESSED} when the run's model is not blessed (for CI); "
        "without it a run that completes exits 0, blessed or not",
    )
    run.set_defaults(handler=run_command)
