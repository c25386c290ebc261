"""One evaluation of a survival model across the sites: one DP release per site, pooled into
metrics (``survival_evaluation``).

Every site sends its test partition's noisy histogram of status x time interval x score bin
(message ``evaluate``); the aggregator checks each reply (exactly the study's cells, finite
numbers, the planned noise), pools them, and reads the metrics with the model's own baseline
hazards and score bins (the model it sent, so a site's reply cannot change them).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord

from federation.server import evaluation as ev
from federation.server import survival_evaluation as sev
from federation.server.evaluator import EvaluationResult, Exchange, Reject, SiteEvaluator
from federation.wire import protocol as p
from federation.wire.spec import StudySpec, feature_names, model_cuts
from federation.wire.survival_evaluation import score_edges, survival_evaluation_noise
from models.registry import build_model


class SurvivalEvaluator(SiteEvaluator):
    """Evaluates survival models of ``spec`` over the sites ``exchange`` reaches (the same
    interface as ``evaluator.Evaluator``)."""

    def __init__(self, spec: StudySpec, exchange: Exchange, reject: Reject) -> None:
        super().__init__(spec, exchange, reject)
        self.noise = survival_evaluation_noise(*self.budget())

    def evaluate(
        self,
        arrays: ArrayRecord,
        config: ConfigRecord,
        nodes: list[int],
        names: dict[int, str],
    ) -> EvaluationResult:
        sites, epsilon = self._read_releases(
            self._send(p.EVALUATE, arrays, config, nodes),
            self.noise,
            lambda metrics: sev.read_release(metrics, self.spec, self.layout, self.noise),
        )
        state = arrays.to_torch_state_dict()
        spec = self.spec
        model = build_model(
            spec.model.name, len(feature_names(spec)), spec.model.hidden, model_cuts(spec)
        )
        model.load_state_dict(state)
        horizons = sev.Horizons.of(
            spec, state["baseline"].double().numpy(), score_edges(spec, model)
        )
        cells = ev.reconcile(ev.pool(sites.values()), self.layout)
        by_name = {names[node]: released for node, released in sites.items()}
        metrics = sev.survival_tables(by_name, cells, self.layout, horizons)
        return self._result(metrics, by_name, cells, sites, epsilon)
