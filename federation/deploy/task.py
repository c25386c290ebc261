"""One ClientApp task at a site, run with the site's own installed node and nothing from the FAB.

Flower's ``flwr-clientapp`` installs the FAB that ``flwr run`` ships (the central team's app),
puts it on the import path and loads whatever ClientApp component its ``pyproject.toml`` names:
at a partner site that is the central team's code, next to the site's data. This runner takes
the task from the SuperNode as Flower's does (``flwr.supernode.runtime.run_clientapp``'s own
pull and push functions, over the SuperNode's Runtime API with the task's token), but reads the
FAB only as data: it looks up the ClientApp component its ``pyproject.toml`` names and, unless
that is the site node (``SITE_NODE``), answers with a refusal the central team sees
(``untrusted-app``) and a line in the site's log. It never extracts, installs or imports the
FAB; the reply always comes from ``federation.client.app``, imported from the site's own
installation.
"""

from __future__ import annotations

import io
import logging
import tomllib
import zipfile
from typing import Any

from flwr.app import Message, RecordDict

from federation.wire import protocol as p
from privacy.refusal import Refusal

SITE_NODE = "federation.client.app:app"  # the only ClientApp a site runs

log = logging.getLogger("allfed.site")


def fab_clientapp(fab: bytes) -> str | None:
    """The ClientApp component a FAB names (``[tool.flwr.app.components] clientapp``), read
    from its ``pyproject.toml`` without extracting anything; None when it names none."""
    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as archive:
            config = tomllib.loads(archive.read("pyproject.toml").decode("utf-8"))
        component = config["tool"]["flwr"]["app"]["components"]["clientapp"]
    except (KeyError, TypeError, ValueError, zipfile.BadZipFile, UnicodeDecodeError):
        return None
    return component if isinstance(component, str) else None


def run_site_task(
    runtime_api_address: str,
    token: str,
    insecure: bool,
    certificates: bytes | None,
    parent_pid: int | None,
) -> int:
    """Pull the task for ``token``, answer it with the site node (or refuse an untrusted FAB),
    push the reply and the node state back; the process exit code.

    The SuperNode waits for a reply to every message it hands out, and Flower replies for a
    task only when its token expires: a task that failed and then reported itself finished
    without a reply would leave the node waiting for ever (every later run stuck behind it).
    So a task that pulled its message always answers it (a failure reply naming no detail when
    the node could not), and one whose reply may not have arrived leaves its token to expire.
    """
    from flwr.common.constant import SubStatus
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime.run_clientapp import (
        pull_task_input,
        push_message,
        push_task_output,
    )

    if parent_pid is not None:
        start_parent_process_monitor(parent_pid)
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=insecure,
        root_certificates=certificates,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    context, finished = None, None  # finished: the status to report once a reply is in
    try:
        message, context, _run, fab = pull_task_input(client)
        try:
            reply, outcome = _answer(message, context, fab.content), SubStatus.COMPLETED
        except Exception:
            log.exception("site node task failed")
            reply, outcome = _failure(message, context), SubStatus.FAILED
        push_message(client, reply, context)
        finished = outcome
        return 0 if outcome == SubStatus.COMPLETED else 1
    except Exception:  # no reply, or one that may not have arrived
        log.exception("site node task failed")
        return 1
    finally:
        try:
            if finished is not None:  # otherwise the token expires and Flower replies for us
                details = "" if finished == SubStatus.COMPLETED else "the site node failed"
                push_task_output(
                    client=client, context=context, sub_status=finished, details=details
                )
        finally:
            heartbeat.stop()
            client.close()


def _failure(message: Message, context: Any) -> Message:
    """The reply to a message the site node could not answer: failed, with no detail (the
    site's log has the traceback)."""
    from federation.client.handlers import status

    refusal = Refusal("internal-error", None, "the site node failed")
    content = RecordDict({p.STATUS: status(_site_name(context), p.FAILED, refusal.public())})
    return Message(content=content, reply_to=message)


def _site_name(context: Any) -> str:
    return str(context.node_config.get(p.NODE_SITE) or f"node-{context.node_id}")


def _answer(message: Message, context: Any, fab: bytes) -> Message:
    component = fab_clientapp(fab)
    if component != SITE_NODE:
        refusal = Refusal("untrusted-app", "clientapp", f"the FAB names {component!r}")
        log.error(
            "refused a task: the app's ClientApp component is %r, not the site node %s",
            component,
            SITE_NODE,
        )
        from federation.client.handlers import status

        content = RecordDict({p.STATUS: status(_site_name(context), p.REFUSED, refusal.public())})
        return Message(content=content, reply_to=message)
    from federation.client.app import app

    return app(message, context)
