"""One evaluation of a survival model across the sites: two DP releases per site, pooled into
metrics (``survival_evaluation``).

Release 1 (``evaluate``): every site sends its test partition's noisy histogram of status x
time interval x score bin; the aggregator checks each reply (exactly the study's cells, finite
numbers, the planned noise), pools them, and reads the metrics with the model's own baseline
hazards and score bins (the model it sent, so a site's reply cannot change them). Release 2
(``evaluate.ranks``): from the pooled histograms it asks every site that sent release 1 for
one concordance sum per cell, from which Harrell's C-index is read. A site that fails release 2
keeps its release-1 metrics; its cells' C-index then comes from the histograms (wider
intervals).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord

from federation.server import evaluation as ev
from federation.server import survival_evaluation as sev
from federation.server.evaluator import EvaluationResult, SiteEvaluator
from federation.wire import protocol as p
from federation.wire.spec import feature_names, model_cuts
from federation.wire.survival_evaluation import (
    concordance_requests_to_config,
    score_edges,
    survival_evaluation_noise,
)
from models.registry import build_model


class SurvivalEvaluator(SiteEvaluator):
    """Evaluates survival models of ``spec`` over the sites ``exchange`` reaches (the same
    interface as ``evaluator.Evaluator``)."""

    release_noise = staticmethod(survival_evaluation_noise)

    def evaluate(
        self,
        arrays: ArrayRecord,
        config: ConfigRecord,
        nodes: list[int],
        names: dict[int, str],
    ) -> EvaluationResult:
        sites, epsilon = self._read_releases(
            self._send(p.EVALUATE, arrays, config, nodes),
            self.histogram_noise,
            lambda metrics: sev.read_release(metrics, self.spec, self.layout, self.histogram_noise),
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
        pooled = ev.pool(sites.values())
        queries = {
            cell: query
            for cell in self.layout.rank_cells()
            if cell in pooled and (query := sev.concordance_query(pooled[cell])) is not None
        }
        requests = concordance_requests_to_config({c: q.request for c, q in queries.items()})
        ranks = self._read_ranks(
            arrays, config, requests, list(sites), names, epsilon,
            lambda metrics: sev.read_concordance(metrics, queries, self.layout, self.rank_noise),
        )  # fmt: skip
        cells, by_name = self._with_ranks(pooled, sites, ranks, names)
        metrics = sev.survival_tables(by_name, cells, self.layout, horizons)
        return self._result(metrics, by_name, cells, sites, epsilon)
