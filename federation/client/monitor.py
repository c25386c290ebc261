"""The site node's reference monitor: the one place that decides whether a message is answered.

Every message the node receives passes here, whatever its type, before any handler can see it
(``client.app`` routes Flower's calls to ``Monitor`` alone; there is no other entry):

1. its kind is one the site answers (census, setup, scaling, train, evaluate, evaluate.ranks,
   analyze); any other is refused;
2. it carries only the records and settings its kind may carry (``protocol.MESSAGE_RECORDS``,
   ``MESSAGE_CONFIG``); anything else is refused (default deny);
3. the site's own settings resolve (data, policy, ledger; the ledger exists for every node);
4. the site's policy accepts the study the run config carries (study, model, DP, epsilon,
   delta, evaluation budget): checked on every message, not only at setup;
5. the handler (``client.handlers``) runs; train and evaluate only inside a run the ledger
   admitted for this very spec and within its plan;
6. the reply passes the disclosure guard (``privacy.guard``) and is written to the ledger's
   audit trail, with the detailed reason of a refusal, which stays at the site.

A refused or failed message gets a status reply and nothing else, its reason a phrase of the
fixed vocabulary (``privacy.refusal``) and at most the key it concerns; an unexpected error
inside a handler is logged at the site and answered with ``internal-error``, never with its
text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from federation.client import handlers
from federation.client.handlers import Refused, Request, status
from federation.client.site import Resolver, SiteSettings
from federation.errors import AllfedError
from federation.wire import protocol as p
from privacy.disclosure import DEFAULT_MIN_CELL_COUNT
from privacy.guard import DisclosureError, Whitelist, check_message
from privacy.ledger import Ledger
from privacy.refusal import Refusal

log = logging.getLogger("allfed.site")

Handler = Callable[[Request], RecordDict]
HANDLERS: Mapping[str, Handler] = {
    "census": handlers.census,
    "setup": handlers.setup,
    "scaling": handlers.scaling,
    "train": handlers.train,
    "evaluate": handlers.evaluate,
    "ranks": handlers.evaluate_ranks,
    "analyze": handlers.analyze,
}
_WHITELISTS = {
    kind: Whitelist(p.REPLY_RECORDS[kind], p.REPLY_KEYS[kind], p.COUNT_KEYS)
    for kind in p.REPLY_RECORDS
}


class Monitor:
    """Decides, for every message, whether and how the site answers it."""

    def __init__(self, resolve: Resolver) -> None:
        self.resolve = resolve

    def __call__(self, message: Message, context: Context) -> Message:
        kind = p.KINDS.get(message.metadata.message_type)
        site: SiteSettings | None = None
        ledger: Ledger | None = None
        try:
            if kind is None:
                raise Refused(Refusal("unknown-message", None, message.metadata.message_type))
            _check_shape(kind, message.content)
            site = self.resolve(context)
            ledger = site.open_ledger()
            refusal = _policy_refusal(site, kind)
            if refusal:
                raise Refused(refusal)
            content = HANDLERS[kind](Request(kind, message, context, site, ledger))
            detail = None
        except Refused as refused:
            content, detail = self._declined(site, context, refused.state, refused.refusal)
        except AllfedError as error:  # the site's data or configuration
            content, detail = self._declined(site, context, p.FAILED, error.refusal())
        except Exception as error:  # a bug: its text could say anything, so it stays here
            log.exception("site node: %s message failed", kind)
            refusal = Refusal("internal-error", None, f"{type(error).__name__}: {error}")
            content, detail = self._declined(site, context, p.FAILED, refusal)
        content, detail = self._guarded(kind, message, content, site, detail)
        if ledger is not None:
            _audit(ledger, kind or "unknown", message, content, context, detail)
        return Message(content=content, reply_to=message)

    def _declined(
        self, site: SiteSettings | None, context: Context, state: str, refusal: Refusal
    ) -> tuple[RecordDict, str]:
        name = site.name if site is not None else _node_name(context)
        log.warning("site %s %s a message: %s", name, state, refusal.detail or refusal.check)
        reply = RecordDict({p.STATUS: status(name, state, refusal.public())})
        return reply, refusal.detail or refusal.check

    def _guarded(
        self,
        kind: str | None,
        message: Message,
        content: RecordDict,
        site: SiteSettings | None,
        detail: str | None,
    ) -> tuple[RecordDict, str | None]:
        """The reply as the guard lets it leave: exactly its kind's records and keys, the model's
        own arrays, no exact count from 1 to the site's min-cell-count."""
        declined = set(content.keys()) == {p.STATUS} and detail is not None
        whitelist = _WHITELISTS["refusal" if declined or kind is None else kind]
        declared = None
        if kind == "train" and p.ARRAYS in message.content:
            declared = {k: tuple(a.shape) for k, a in message.content[p.ARRAYS].items()}
        min_cell = site.policy.min_cell_count if site is not None else DEFAULT_MIN_CELL_COUNT
        try:
            check_message(_described(content), whitelist, min_cell, declared)
        except DisclosureError as error:
            log.error("the disclosure guard stopped a %s reply: %s", kind, error)
            name = site.name if site is not None else "site"
            refusal = Refusal("internal-error", None, f"disclosure guard: {error}")
            return RecordDict({p.STATUS: status(name, p.FAILED, refusal.public())}), str(error)
        return content, detail


def _check_shape(kind: str, content: RecordDict) -> None:
    """Default deny: only the records and config keys this kind of message may carry."""
    allowed = p.MESSAGE_RECORDS[kind]
    for name, record in content.items():
        expected = allowed.get(name)
        actual = (
            "arrays"
            if isinstance(record, ArrayRecord)
            else ("config" if isinstance(record, ConfigRecord) else "metrics")
        )
        if expected != actual:
            raise Refused(Refusal("unexpected-record", _safe_key(name), f"record {name!r}"))
    for required in allowed:
        if required not in content:
            raise Refused(Refusal("unexpected-record", required, f"no {required!r} record"))
    config = content[p.CONFIG]
    patterns = p.MESSAGE_CONFIG[kind]
    for key in config:
        if not any(re.fullmatch(pattern, key) for pattern in patterns):
            raise Refused(Refusal("unknown-config-key", _safe_key(key), f"config key {key!r}"))


def _policy_refusal(site: SiteSettings, kind: str) -> Refusal | None:
    """The site's policy on the run's study, at every message (an analysis is checked against
    its own request by its handler, and trains no model)."""
    spec = site.spec
    if kind == "analyze":
        return site.policy.refusal(spec.study.name, None, True, 0.0, 0.0)
    return site.policy.refusal(
        spec.study.name,
        spec.model.name,
        spec.privacy.enabled,
        spec.privacy.target_epsilon,
        spec.privacy.delta,
        spec.privacy.evaluation_budget,
    )


def _described(content: RecordDict) -> dict[str, tuple[str, dict]]:
    """A reply as plain data for the guard: array shapes, metric and config values."""
    described: dict[str, tuple[str, dict]] = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            described[name] = ("arrays", {k: tuple(a.shape) for k, a in record.items()})
        elif isinstance(record, MetricRecord):
            described[name] = ("metrics", dict(record))
        else:
            described[name] = ("config", dict(record))
    return described


def _audit(
    ledger: Ledger,
    kind: str,
    message: Message,
    content: RecordDict,
    context: Context,
    detail: str | None,
) -> None:
    """The ledger's audit trail: what left (records, keys, array shapes), never values."""
    state = context.state.get("allfed")
    config = message.content.config_records.get(p.CONFIG)
    run_key = str(config.get(p.RUN_KEY, "") or "") if config is not None else ""
    if not run_key and state is not None and "run-key" in state:
        run_key = str(state["run-key"])
    reply_status = content.config_records.get(p.STATUS)
    arrays = content.array_records.get(p.ARRAYS)
    server_round = config.get(p.SERVER_ROUND, 0) if config is not None else 0
    ledger.record_message(
        run_key or str(context.run_id),
        int(server_round) if isinstance(server_round, int) else 0,
        kind,
        str(reply_status[p.STATUS_STATE]) if reply_status is not None else p.OK,
        [f"{name}/{key}" for name, record in content.items() for key in record],
        {k: list(a.shape) for k, a in arrays.items()} if arrays is not None else {},
        detail,
    )


_KEY_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,80}")


def _safe_key(name: str) -> str | None:
    """A key echoed in a refusal only if it looks like a key (the aggregator chose it anyway)."""
    return name if _KEY_NAME.fullmatch(name) else None


def _node_name(context: Context) -> str:
    return str(context.node_config.get(p.NODE_SITE) or f"node-{context.node_id}")
