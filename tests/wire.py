"""Talking to the real site node as Flower does: messages built as a ServerApp builds them,
handed to the ClientApp that ``pyproject.toml`` names, with a node config as in deployment."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from federation.client.app import app as site_node
from federation.client.app import make_client_app
from federation.client.site import SiteSettings
from federation.server import evaluation as ev
from federation.wire import protocol as p
from federation.wire.evaluation import layout, rank_requests_to_config
from federation.wire.spec import StudySpec, feature_names, federated_columns
from models.registry import build_model

_IDS = itertools.count()


def node_context(
    data: Path,
    spec: StudySpec,
    site: str = "urban",
    policy: Path | None = None,
    ledger: Path | None = None,
    run_id: int = 1,
    state: RecordDict | None = None,
) -> Context:
    """A SuperNode's context: its node config (data, site, policy, ledger) and the run config
    with the study spec as ``allfed run launch`` sends it."""
    node_config = {p.NODE_DATA: str(data), p.NODE_SITE: site}
    if policy is not None:
        node_config[p.NODE_POLICY] = str(policy)
    if ledger is not None:
        node_config[p.NODE_LEDGER] = str(ledger)
    return Context(
        run_id=run_id,
        node_id=7,
        node_config=node_config,
        state=state if state is not None else RecordDict(),
        run_config={p.RUN_STUDY: spec.to_toml()},
    )


def send(context: Context, message_type: str, content: RecordDict, app=site_node) -> RecordDict:
    """What the node replies to one message (its content)."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, context.run_id, 1
    message = Message(content=content, dst_node_id=7, message_type=message_type)
    message.metadata.__dict__["_message_id"] = f"message-{next(_IDS)}"
    return app(message, context).content


def census(context: Context, run_key: str = "run-1") -> RecordDict:
    return send(context, p.CENSUS, RecordDict({p.CONFIG: ConfigRecord({p.RUN_KEY: run_key})}))


def setup(context: Context, run_key: str = "run-1", **config) -> RecordDict:
    return send(
        context, p.SETUP, RecordDict({p.CONFIG: ConfigRecord({p.RUN_KEY: run_key, **config})})
    )


def scaling(context: Context, run_key: str = "run-1", **bounds) -> RecordDict:
    """The scaling message with ``bounds`` (column -> [low, high]) as the aggregator sends them."""
    config = {f"{p.BOUNDS}.{p.encode_name(c)}": list(b) for c, b in bounds.items()}
    return send(
        context, p.SCALING, RecordDict({p.CONFIG: ConfigRecord({p.RUN_KEY: run_key, **config})})
    )


def global_arrays(spec: StudySpec, scale: float = 0.0) -> ArrayRecord:
    model = build_model(spec.model.name, len(feature_names(spec)), spec.model.hidden)
    state = model.state_dict()
    for tensor in state.values():
        tensor.mul_(scale)
    return ArrayRecord(state)


def model_config(spec: StudySpec, server_round: int = 1, **extra) -> ConfigRecord:
    n = len(federated_columns(spec))
    return ConfigRecord(
        {
            p.SERVER_ROUND: server_round,
            p.SCALING_CENTER: [0.0] * n,
            p.SCALING_SCALE: [1.0] * n,
            **extra,
        }
    )


def train(context: Context, spec: StudySpec, server_round: int = 1, arrays=None, **extra):
    content = RecordDict(
        {
            p.ARRAYS: arrays or global_arrays(spec),
            p.CONFIG: model_config(spec, server_round, **extra),
        }
    )
    return send(context, MessageType.TRAIN, content)


def evaluate(context: Context, spec: StudySpec, arrays=None, **extra) -> RecordDict:
    content = RecordDict(
        {p.ARRAYS: arrays or global_arrays(spec), p.CONFIG: model_config(spec, **extra)}
    )
    return send(context, MessageType.EVALUATE, content)


def evaluate_ranks(context: Context, spec: StudySpec, first: RecordDict, arrays=None) -> RecordDict:
    """Release 2, asking what the aggregator would ask after ``first`` (release 1)."""
    cells = layout(spec)
    noise = float(first[p.METRICS][p.NOISE_MULTIPLIER])
    pooled = ev.read_histograms(first[p.METRICS], cells, noise)
    requests = {c: r for c in cells.rank_cells() if (r := ev.rank_request(pooled[c])) is not None}
    config = model_config(spec)
    config.update(rank_requests_to_config(requests))
    content = RecordDict({p.ARRAYS: arrays or global_arrays(spec), p.CONFIG: config})
    return send(context, p.EVALUATE_RANKS, content)


def state_of(reply: RecordDict) -> str:
    return str(reply[p.STATUS][p.STATUS_STATE]) if p.STATUS in reply else p.OK


def reason_of(reply: RecordDict) -> str:
    return str(reply[p.STATUS][p.STATUS_REASON])


def numbers(value):
    """Every number in a (nested) record value."""
    if isinstance(value, list | tuple):
        for item in value:
            yield from numbers(item)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield float(value)


_DIGITS = re.compile(r"\d")


def has_digits(text: str) -> bool:
    return bool(_DIGITS.search(text))


def integral(values) -> np.ndarray:
    values = np.asarray(list(values), dtype=float)
    return values[np.isclose(values, np.round(values), atol=1e-9)]


class LocalGrid:
    """The sites as in-process ClientApps, each with its own ``context.state``: a new grid is
    a restarted federation (no Ray start-up, so the test stays fast). Same handlers as a node."""

    def __init__(self, sites: list[SiteSettings], run_id: int) -> None:
        self.nodes = {
            i: (
                make_client_app(lambda _c, s=site: s),
                Context(
                    run_id=run_id, node_id=i, node_config={}, state=RecordDict(), run_config={}
                ),
            )
            for i, site in enumerate(sites, start=1)
        }

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for number, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"m{number}"
            app, context = self.nodes[message.metadata.dst_node_id]
            replies.append(app(message, context))
        return replies
