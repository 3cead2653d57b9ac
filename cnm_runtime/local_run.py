"""cnm-run on this machine: every query of a queries file into ``-o`` (and ``--errors``), resumable.

Predictions go to ``-o`` as JSON lines in input order, each flushed as its batch finishes; error records to
``--errors`` (or the log), and the metrics to ``--metrics``. Each output is locked for the run, and the
predictions' provenance is written beside them
(``<output>.run.json``), so that ``--resume`` continues only an output of the same queries and model, skipping
the qids already in it. The run stops cleanly when ``StopSignals`` asks (Ctrl-C, SIGTERM).
"""
from __future__ import annotations

import logging
import sys
import time
from contextlib import ExitStack, closing
from typing import TYPE_CHECKING, Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from cnm_runtime.options import RunOptions
from cnm_runtime.outcomes import QueryError
from cnm_runtime.provenance import check_same, provenance, provenance_path
from cnm_runtime.queries import QueriesFile
from cnm_runtime.report import RunTally
from cnm_runtime.run_files import JsonLines, LockedFile, RunFiles, read_back, write_json_atomic
from cnm_runtime.stop import StopSignals

if TYPE_CHECKING:  # the caller makes the grounder; this module only drives it
    from cnm_runtime.grounder import Grounder

log = logging.getLogger("cnm-run")


def run_local(grounder: Grounder, files: RunFiles, resume: bool, stop: StopSignals) -> dict[str, Any]:
    """Ground every query not yet in ``files.output``; the run's metrics (those of an interrupted run count
    what it did)."""
    started = time.perf_counter()
    queries = QueriesFile(files.queries)
    count, queries_sha256 = queries.scan()
    tally = RunTally()
    with ExitStack() as stack:
        # each output file this run's alone, before any is written
        locked = {flag: stack.enter_context(LockedFile(path, flag)) for flag, path in files.outputs().items()}
        output = locked.get("-o")
        done = _resume(output, files, queries_sha256, tally) if resume and output else []
        predictions = stack.enter_context(JsonLines(output, append=resume))  # emptied first unless resuming
        if output and output.regular:  # what it is made from, for a later --resume (a device is no output)
            write_json_atomic(provenance_path(files.output), provenance(queries_sha256, files.model))
        errors = stack.enter_context(JsonLines(locked["--errors"])) if files.errors else None
        progress = stack.enter_context(tqdm(total=count, initial=len(done), unit="query", file=sys.stderr,
                                            disable=None, dynamic_ncols=True))
        stack.enter_context(logging_redirect_tqdm())
        stop.grounding()
        results = stack.enter_context(closing(grounder.ground(files.features, queries.entries(), skip_qids=done)))
        for result in results:
            if isinstance(result, QueryError):
                tally.add_error(result)
                if errors:
                    errors.write(result.record())
                else:
                    log.warning("qid %s: %s: %s", result.qid, result.code, result.message)
            else:
                record = result.record()
                predictions.write(record)
                tally.add_prediction(record)
            progress.update(1)
            if stop.requested:
                break
        metrics = tally.metrics(grounder.provider, time.perf_counter() - started)
        if files.metrics:
            write_json_atomic(files.metrics, metrics)
    return metrics


def _resume(output: LockedFile, files: RunFiles, queries_sha256: str | None, tally: RunTally) -> list[str | int]:
    """The qids already in ``output`` (counted into ``tally``), once its provenance says it is this run's."""
    if queries_sha256 is None:
        raise ValueError(f"--resume needs a queries file it can read twice; {files.queries} is not one (a pipe?)")
    if not files.output.stat().st_size:
        log.info("nothing to resume: %s is empty", files.output)
        return []
    check_same(provenance_path(files.output), provenance(queries_sha256, files.model),
               f"run without --resume to start afresh (that overwrites -o {files.output}), or give another -o")
    done = []
    for record in read_back(output):
        done.append(record["qid"])
        tally.add_prediction(record, resumed=True)
    log.info("resuming: %d predictions already in %s", len(done), files.output)
    return done
