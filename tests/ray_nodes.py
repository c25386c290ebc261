"""A Flower client mod for the Ray cluster test: where each site's work ran.

Importable by Ray's workers (the test's folder is on their ``PYTHONPATH``); it writes the Ray
node of every message a site handles into ``ALLFED_TEST_RAY_NODES`` (set in the environment of
the cluster's ``ray start`` processes, whose workers inherit it).
"""

from __future__ import annotations

import os
from pathlib import Path

from flwr.app import Context, Message


def record_ray_node(msg: Message, context: Context, call_next) -> Message:
    import ray

    folder = Path(os.environ["ALLFED_TEST_RAY_NODES"])
    node = ray.get_runtime_context().get_node_id()
    site = context.node_config["partition-id"]
    with (folder / f"{os.getpid()}.txt").open("a", encoding="utf-8") as out:
        out.write(f"{node} {site} {msg.metadata.message_type}\n")
    return call_next(msg, context)
