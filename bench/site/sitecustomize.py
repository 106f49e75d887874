"""Benchmark-only: the one ``sitecustomize`` of the benchmarks, which loads the hooks a run asks for.

A bench puts this directory on the ``PYTHONPATH`` of the service it starts (never the service's own
path) and names, in the environment, the hooks it wants; each is a module beside this one, loaded
when its variable is set (none set, nothing is loaded):

- ``BENCH_THREAD_NAMES``: each thread gives its name to the operating system (``bench_thread_names``,
  ``bench/alarm_path.py``'s CPU per thread);
- ``BENCH_SQL_TRACE``: every SQL statement and store request, to that file (``bench_sql_trace``,
  ``bench/sos_statements.py``);
- ``BENCH_SOS_TRACE``: where an SOS's time goes, to that file (``bench_sos_trace``,
  ``bench/alarms.py --trace``);
- ``BENCH_SEEK_TRACE``: what the threads do while a player seeks, to that file (``bench_seek_trace``,
  ``bench/workspace.py --service-trace``);
- ``INGEST_TIMELINE_OUT``: a timeline of the ingest steps, to that file (``bench_ingest_timeline``,
  with ``bench/ingest.py``; ``bench/ingest_timeline_report.py`` reads it).

Python loads one ``sitecustomize`` a process, the first on its path: one directory for every hook
lets a run take several at once. The variables are not ``EVIDENCE_`` ones, so the service's
telemetry companion inherits them with the path.
"""

from __future__ import annotations

import importlib
import os

HOOKS = {
    "BENCH_THREAD_NAMES": "bench_thread_names",
    "BENCH_SQL_TRACE": "bench_sql_trace",
    "BENCH_SOS_TRACE": "bench_sos_trace",
    "BENCH_SEEK_TRACE": "bench_seek_trace",
    "INGEST_TIMELINE_OUT": "bench_ingest_timeline",
}

for _variable, _module in HOOKS.items():
    if os.environ.get(_variable):
        importlib.import_module(_module)
