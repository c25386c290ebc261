"""Which site a reply belongs to: the one whose message it answers, not the node it says it
comes from (Flower answers for a site itself, from the ServerApp's own node, when it cannot
fetch the site's reply: the site then failed with that error, it did not stay silent)."""

import time

from flwr.app import ConfigRecord, Error, Message, Metadata, RecordDict

from federation.server.exchange import SiteExchange
from federation.server.sites import Roster, SiteRecord
from federation.wire import protocol as p

SERVER_NODE = 0


def _reply(to: Message, src_node_id: int, error: Error | None = None) -> Message:
    metadata = Metadata(
        run_id=1, message_id="", src_node_id=src_node_id, dst_node_id=SERVER_NODE,
        reply_to_message_id=to.metadata.message_id, group_id="", created_at=time.time(),
        ttl=60.0, message_type=to.metadata.message_type,
    )  # fmt: skip
    if error is not None:
        return Message(error, metadata=metadata)
    content = RecordDict({p.STATUS: ConfigRecord({p.STATUS_STATE: p.OK})})
    return Message(content, metadata=metadata)


class UnavailableReplyGrid:
    """Site 11 replies; Flower answers for site 12 from the ServerApp's node (its reply's objects
    could not be pulled); site 13 never replies."""

    def send_and_receive(self, messages, timeout):
        for number, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"message-{number}"
        by_node = {m.metadata.dst_node_id: m for m in messages}
        unavailable = Error(code=0, reason="Reply message objects are unavailable.")
        return [_reply(by_node[11], 11), _reply(by_node[12], SERVER_NODE, unavailable)]


def test_a_reply_flower_wrote_for_a_site_fails_that_site_with_its_error():
    roster = Roster({node: SiteRecord(name=f"site-{node}") for node in (11, 12, 13)})
    exchange = SiteExchange(UnavailableReplyGrid(), roster, timeout=5.0)
    messages = [Message(RecordDict(), dst_node_id=n, message_type="train") for n in (11, 12, 13)]
    usable = exchange(messages)
    assert [r.metadata.src_node_id for r in usable] == [11]
    assert roster[11].status == p.OK
    assert roster[12].status == p.FAILED
    assert roster[12].reason == "node error: Reply message objects are unavailable."
    assert roster[13].status == p.FAILED
    assert roster[13].reason == "no reply within 5 s"
