"""A site's task runner (``deploy.task``) never leaves its SuperNode waiting for a reply.

Flower's SuperNode waits for a reply to every message it hands a task, and replies for a task
itself only once the task's token expires. These tests run ``run_site_task`` with Flower's
Runtime API calls replaced by recorders: what it pushes back, and whether it reports the task
finished, for a node that answers, one that fails, and a reply lost on the way.
"""

from __future__ import annotations

import zipfile
from io import BytesIO

from flwr.app import Context, Message, RecordDict
from flwr.common.constant import SubStatus

from federation.deploy import task
from federation.wire import protocol as p


def fab_naming(component: str) -> bytes:
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "pyproject.toml", f'[tool.flwr.app.components]\nclientapp = "{component}"\n'
        )
    return buffer.getvalue()


class FakeFab:
    def __init__(self, content: bytes) -> None:
        self.content = content


class Runtime:
    """What the task sent to the SuperNode's Runtime API."""

    def __init__(self, fab: bytes, push_fails: bool = False) -> None:
        self.fab, self.push_fails = fab, push_fails
        self.replies: list[Message] = []
        self.outputs: list[str] = []

    def install(self, monkeypatch) -> None:
        from flwr.supercore import heartbeat, runtime
        from flwr.supernode.runtime import run_clientapp

        message = Message(RecordDict(), dst_node_id=7, message_type=p.TRAIN)
        message.metadata.__dict__["_message_id"] = "message-1"
        context = Context(
            run_id=1,
            node_id=7,
            node_config={p.NODE_SITE: "urban"},
            state=RecordDict(),
            run_config={},
        )

        def push_message(_client, reply, _context):
            if self.push_fails:
                raise ConnectionError("the SuperNode went away")
            self.replies.append(reply)

        def push_task_output(client, context, sub_status, details):
            self.outputs.append(sub_status)

        monkeypatch.setattr(
            run_clientapp, "pull_task_input", lambda _c: (message, context, None, FakeFab(self.fab))
        )
        monkeypatch.setattr(run_clientapp, "push_message", push_message)
        monkeypatch.setattr(run_clientapp, "push_task_output", push_task_output)
        monkeypatch.setattr(
            runtime.RuntimeHttpClient, "from_server_address", staticmethod(lambda **_: Closable())
        )
        monkeypatch.setattr(heartbeat, "HeartbeatSender", lambda _fn: Closable())


class Closable:
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


def run(runtime: Runtime, monkeypatch) -> int:
    runtime.install(monkeypatch)
    return task.run_site_task("127.0.0.1:1", "token", True, None, None)


def test_an_untrusted_fab_is_answered_with_a_refusal_and_the_task_reported_done(monkeypatch):
    runtime = Runtime(fab_naming("evilapp:app"))
    assert run(runtime, monkeypatch) == 0
    (reply,) = runtime.replies
    assert reply.content[p.STATUS][p.STATUS_STATE] == p.REFUSED
    assert runtime.outputs == [SubStatus.COMPLETED]


def test_a_node_that_fails_still_answers_and_says_nothing_of_why(monkeypatch, caplog):
    """The SuperNode gets a failed status to pass on, not silence; the exception's text (which
    could hold anything) stays in the site's log."""

    def broken(*_):
        raise RuntimeError("value 173 in row 12 of /data/site.csv")

    monkeypatch.setattr(task, "_answer", broken)
    runtime = Runtime(fab_naming(task.SITE_NODE))
    assert run(runtime, monkeypatch) == 1
    (reply,) = runtime.replies
    status = reply.content[p.STATUS]
    assert status[p.STATUS_STATE] == p.FAILED and status[p.STATUS_SITE] == "urban"
    assert status[p.STATUS_REASON].startswith("internal-error")
    assert "173" not in str(reply.content) and "site.csv" not in str(reply.content)
    assert reply.metadata.reply_to_message_id == "message-1"
    assert runtime.outputs == [SubStatus.FAILED]
    assert "row 12" in caplog.text  # the operator sees it


def test_a_reply_that_may_be_lost_leaves_the_token_to_expire(monkeypatch):
    """Reporting the task finished without a reply in would leave the SuperNode waiting for
    ever; left alone, its token expires and Flower replies with an error for it."""
    monkeypatch.setattr(
        task, "_answer", lambda message, *_: Message(RecordDict(), reply_to=message)
    )
    runtime = Runtime(fab_naming(task.SITE_NODE), push_fails=True)
    assert run(runtime, monkeypatch) == 1
    assert runtime.replies == [] and runtime.outputs == []
