"""The warm executor's memory: what a forked task computed that the tasks after it can reuse.

Every ClientApp task runs in a child forked from the executor (``deploy.node``), so what it
computes dies with it: the site's checked table (reading and checking the file is most of a
training task's own work) and the epsilons its planner and ledger composed (a PRV composition
takes a tenth of a second or more, and the ledger asks for the ones the plan computed at setup).
A child sends the entries it added to those two caches back to the executor over a pipe when its
task is done; the executor keeps them, and every child forked later starts with them.

Nothing is trusted more than before: each cache keys its entries by everything its value
depends on (a table: its file's identity, times and SHA-256, the spec, the partition; an
epsilon: its public releases, delta and accountant), and a task that finds a key changed reads
and checks again. A table read from a database (an OMOP source) is not handed on: the database
can change under the same description file. Nothing leaves the site's machine: the pipe joins
two processes of the site's own node.
"""

from __future__ import annotations

import itertools
import os
import pickle
from typing import Any

from federation.client import site
from federation.omop import is_source
from privacy import accounting

Marks = dict[str, dict[Any, int]]


def _caches() -> dict[str, dict]:
    return {"tables": site.TABLES, "epsilons": accounting.EPSILONS}


def marks() -> Marks:
    """What this process's caches hold now (each entry's identity), to tell later what a task
    added."""
    return {
        name: {key: id(value) for key, value in cache.items()} for name, cache in _caches().items()
    }


def added(before: Marks) -> dict[str, dict]:
    """The entries put into the caches since ``before`` (new keys, or keys given a new value),
    without the tables of database sources."""
    found = {}
    for name, cache in _caches().items():
        known = before.get(name, {})
        found[name] = {k: v for k, v in cache.items() if known.get(k) != id(v)}
    found["tables"] = {k: v for k, v in found["tables"].items() if not is_source(k)}
    return found


def send(fd: int, entries: dict[str, dict]) -> None:
    """Write ``entries`` to the pipe ``fd`` and close it (the child's side)."""
    with os.fdopen(fd, "wb") as pipe:
        pickle.dump(entries, pipe, protocol=pickle.HIGHEST_PROTOCOL)


def receive(fd: int) -> None:
    """Read what a child sent on ``fd`` (until it closes it) and keep it in this process's
    caches; a child that died before it sent anything adds nothing."""
    with os.fdopen(fd, "rb") as pipe:
        data = pipe.read()
    if not data:
        return
    try:
        entries = pickle.loads(data)
    except (pickle.UnpicklingError, EOFError, ValueError):
        return  # cut short: the child was stopped while it wrote
    for name, cache in _caches().items():
        cache.update(entries.get(name, {}))
    epsilons = accounting.EPSILONS
    for key in list(itertools.islice(epsilons, max(len(epsilons) - accounting.MAX_EPSILONS, 0))):
        del epsilons[key]  # the oldest first, as the accountant itself drops them
