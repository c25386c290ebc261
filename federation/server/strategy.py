"""The Flower strategy a study asks for, assembled from its spec.

Aggregation is Flower's own: FedAvg (the default), FedProx, FedAdam, and the robust ones, which
bound what a minority of faulty or malicious sites can do to the model: FedMedian (coordinate-wise
median), FedTrimmedAvg (coordinate-wise mean after cutting ``trim-fraction`` of the sites from
each end) and Krum (the one update closest to its neighbours). The robust ones ignore how many
records a site has. Updates reach any of them only after ``validation`` has checked them.

The run loop (``run.py``) picks which sites take part in a round and hands the strategy only
replies that passed validation; the strategy never averages epsilon or any other per-site metric,
which the loop records per site instead.
"""

from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from federation.wire import protocol as p
from federation.wire.spec import StudySpec


def build_strategy(spec: StudySpec) -> Strategy:
    """The spec's strategy over every site that is still in the run."""
    common = dict(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
        weighted_by_key=p.NUM_EXAMPLES,
        arrayrecord_key=p.ARRAYS,
        configrecord_key=p.CONFIG,
        train_metrics_aggr_fn=_total_examples,
        evaluate_metrics_aggr_fn=_total_examples,
    )
    strategy = spec.training.strategy
    if strategy == "fedprox":
        return FedProx(proximal_mu=spec.training.proximal_mu, **common)
    if strategy == "fedadam":
        # Server learning rate eta; the sites' own rate is the spec's learning-rate.
        return FedAdam(eta=0.1, eta_l=spec.training.learning_rate, **common)
    if strategy == "fedmedian":
        return FedMedian(**common)
    if strategy == "fedtrimmedavg":
        return FedTrimmedAvg(beta=spec.training.trim_fraction, **common)
    if strategy == "krum":
        return Krum(num_malicious_nodes=spec.training.krum_malicious, **common)
    return FedAvg(**common)


def aggregate(
    strategy: Strategy, server_round: int, replies: list[Message], current: ArrayRecord
) -> ArrayRecord:
    """The strategy's new global model, in the current model's dtypes (the current one when
    nothing was aggregated). FedAdam computes in float64; a float64 global model would make every
    site's float32 update fail validation from the next round on."""
    new_arrays, _ = strategy.aggregate_train(server_round, replies)
    if new_arrays is None:
        return current
    return ArrayRecord(
        {
            name: Array(array.numpy().astype(current[name].numpy().dtype, copy=False))
            for name, array in new_arrays.items()
        }
    )


def _total_examples(contents: list[RecordDict], weight_key: str) -> MetricRecord:
    """The only cross-site train metric the strategy keeps: how many records took part."""
    return MetricRecord({weight_key: sum(int(c[p.METRICS][weight_key]) for c in contents)})
