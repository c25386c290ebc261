"""One evaluation of a survival model across the sites: one DP release per site, pooled into
metrics (``survival_evaluation``).

Every site sends its test partition's noisy histogram of status x time interval x score bin
(message ``evaluate``); the aggregator checks each reply (exactly the study's cells, finite
numbers, the planned noise), pools them, and reads the metrics with the model's own baseline
hazards (the model it sent, so a site's reply cannot change them).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from federation.server import evaluation as ev
from federation.server import survival_evaluation as sev
from federation.server.evaluator import EvaluationResult, Exchange, Reject, check_noise
from federation.wire import protocol as p
from federation.wire.evaluation import layout
from federation.wire.spec import StudySpec
from federation.wire.survival_evaluation import survival_evaluation_noise


class SurvivalEvaluator:
    """Evaluates survival models of ``spec`` over the sites ``exchange`` reaches (the same
    interface as ``evaluator.Evaluator``)."""

    def __init__(self, spec: StudySpec, exchange: Exchange, reject: Reject) -> None:
        self.spec, self.exchange, self.reject = spec, exchange, reject
        self.layout = layout(spec)
        privacy = spec.privacy
        self.noise = survival_evaluation_noise(
            privacy.evaluation_budget,
            privacy.delta,
            privacy.accountant,
            len(spec.training.evaluation_rounds()),
        )

    def evaluate(
        self,
        arrays: ArrayRecord,
        config: ConfigRecord,
        nodes: list[int],
        names: dict[int, str],
    ) -> EvaluationResult:
        content = RecordDict({p.ARRAYS: arrays, p.CONFIG: config})
        messages = [
            Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=node)
            for node in nodes
        ]
        sites: dict[int, dict] = {}
        epsilon: dict[int, float] = {}
        for reply in self.exchange(messages):
            if p.METRICS not in reply.content:
                continue
            node, metrics = reply.metadata.src_node_id, reply.content[p.METRICS]
            try:
                check_noise(metrics, self.noise)
                sites[node] = sev.read_release(metrics, self.spec, self.layout, self.noise)
                epsilon[node] = float(metrics[p.EPSILON])
            except (KeyError, TypeError, ValueError) as error:
                self.reject(node, f"evaluation reply rejected: {error}")
        horizons = sev.Horizons.of(
            self.spec, arrays.to_torch_state_dict()["baseline"].double().numpy()
        )
        cells = ev.reconcile(ev.pool(sites.values()), self.layout)
        by_name = {names[node]: released for node, released in sites.items()}
        return EvaluationResult(
            metrics=sev.survival_tables(by_name, cells, self.layout, horizons),
            representation=ev.representation(by_name, cells, self.layout),
            n_test={
                node: ev.published_count(released[ev.POOLED_CELL].records)
                for node, released in sites.items()
            },
            epsilon=epsilon,
        )
