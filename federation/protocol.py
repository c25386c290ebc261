"""The wire contract between the aggregator and the site nodes, in one place.

``federation.server`` and ``federation.client`` share this module (and ``scorestats`` for the
evaluation statistics) and nothing else. A train reply may carry only the model's arrays and the
metrics in ``TRAIN_METRICS``; the tests inspect real replies against this whitelist.
"""

# Message types (Flower "<category>.<action>").
SETUP = "query.setup"
ANALYZE = "query.analyze"  # a descriptive analysis (federation.queries), answered under DP

# Record keys inside a message's RecordDict.
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
STATUS = "status"

# Run config (``[tool.flwr.app.config]`` / ``flwr run --run-config``) and node config keys.
RUN_STUDY = "study"
RUN_STUDY_FILE = "study-file"
RUN_OUT = "out"
RUN_SITES = "sites"  # local simulation only: "NAME=PATH,NAME=PATH" by partition id
RUN_EXPECTED_SITES = "expected-sites"  # sites to wait for before setup (default: min-sites)
RUN_RESUME = "resume"  # a run directory whose checkpoint the run continues
RUN_ANALYSIS = "analysis"  # an AnalysisRequest as JSON: the run answers it instead of training
NODE_DATA = "data"
NODE_SITE = "site"
NODE_POLICY = "policy"  # the site's privacy policy (TOML), owned by the site
NODE_LEDGER = "ledger"  # the site's ledger (SQLite), one file per site

# Server -> site config keys.
SERVER_ROUND = "server-round"
SCALING_CENTER = "scaling-center"
SCALING_SCALE = "scaling-scale"
PROXIMAL_MU = "proximal-mu"
STANDARDIZATION_NOISE = "standardization-noise"
# Setup config: the run's identity in every site's ledger, and on a resume the rounds the server
# completed; the site then continues its recorded plan instead of planning a fresh budget.
RUN_KEY = "run-key"
RESUME_AFTER = "resume-after"
ANALYSIS_REQUEST = "analysis-request"  # analyze config: the AnalysisRequest as JSON

# Site -> server status (a ConfigRecord under STATUS, present in every setup reply and in any
# reply where the site declines to do what was asked).
STATUS_SITE = "site"
STATUS_STATE = "state"
STATUS_REASON = "reason"
OK, REFUSED, FAILED = "ok", "refused", "failed"
# An evaluate reply whose statistics the site keeps (too few test events to release); the site
# stays in the run.
WITHHELD = "withheld"

# Setup reply metrics.
N_TRAIN = "n-train"
N_TEST = "n-test"
SUM = "scaling-sum"
SUM_SQUARES = "scaling-sum-squares"
COUNT = "scaling-count"
REPRESENTATION = "representation"  # prefix: training records per group level, small cells withheld

# Train reply metrics: the whole whitelist.
NUM_EXAMPLES = "num-examples"
EPSILON = "epsilon"
DELTA = "delta"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
STEPS = "steps"
TRAIN_METRICS = (NUM_EXAMPLES, EPSILON, DELTA, NOISE_MULTIPLIER, SAMPLE_RATE, STEPS)

# Analyze reply metrics: EPSILON, DELTA, NOISE_MULTIPLIER and the released cells, keyed
# "cell.<stratum>.<variable>.<level>.<statistic>" (names percent-encoded, as scorestats does); a
# cell absent from the reply was withheld at the site (a count at or under its min-cell-count).
CELL = "cell"

# Evaluate reply: NUM_EXAMPLES plus ScoreStats under these prefixes.
SITE_STATS = "site"
GROUP_STATS = "group"
INTERSECTION_STATS = "intersection"  # pairs of group columns, as scorestats.intersect_groups


def site_entries(run_config) -> list[tuple[str, str]]:
    """The run config's ``sites`` ("NAME=PATH,NAME=PATH") as (name, path) pairs, in order."""
    text = str(run_config.get(RUN_SITES) or "")
    pairs = [entry.partition("=") for entry in text.split(",") if entry.strip()]
    return [(name.strip(), path.strip()) for name, _, path in pairs]


# Disclosure whitelist: every record and key a site may send, per reply kind (regular
# expressions matched in full). The site's guard (privacy.guard) checks each reply against it.
_NAME = r"[^.]+"  # one percent-encoded group column or level name
_STATUS_KEYS = (STATUS_SITE, STATUS_STATE, STATUS_REASON)
_STATS_FIELDS = (
    r"n_bins|hist_(pos|neg)\.(bins|counts)|tp|fp|tn|fn|threshold_coarsened"
    r"|sum_sq_error|sum_log_loss|sum_score|sum_score_pos|cal_count|cal_sum_y|cal_sum_p"
)
_STATS_KEYS = (
    rf"{SITE_STATS}\.({_STATS_FIELDS})",
    rf"({GROUP_STATS}|{INTERSECTION_STATS})\.{_NAME}\.{_NAME}\.(({_STATS_FIELDS})|withheld)",
)
REPLY_RECORDS = {
    "setup": {STATUS: "config", METRICS: "metrics"},
    "train": {STATUS: "config", ARRAYS: "arrays", METRICS: "metrics"},
    "evaluate": {STATUS: "config", METRICS: "metrics"},
    "analyze": {STATUS: "config", METRICS: "metrics"},
}
REPLY_KEYS = {
    "setup": {
        STATUS: _STATUS_KEYS,
        METRICS: (
            N_TRAIN,
            N_TEST,
            SUM,
            SUM_SQUARES,
            COUNT,
            STANDARDIZATION_NOISE,
            rf"{REPRESENTATION}\.{_NAME}\.{_NAME}\.(count|withheld)",
        ),
    },
    "train": {STATUS: _STATUS_KEYS, METRICS: TRAIN_METRICS},
    "evaluate": {STATUS: _STATUS_KEYS, METRICS: (NUM_EXAMPLES, *_STATS_KEYS)},
    "analyze": {
        STATUS: _STATUS_KEYS,
        METRICS: (EPSILON, DELTA, NOISE_MULTIPLIER, rf"{CELL}(\.{_NAME}){{3}}\.(count|sum|sumsq)"),
    },
}
# Keys whose values are counts of records: each must be 0 or above the site's min-cell-count.
COUNT_KEYS = (
    N_TRAIN,
    N_TEST,
    NUM_EXAMPLES,
    COUNT,
    rf"{REPRESENTATION}\..*\.count",
    r".*\.(hist_(pos|neg)\.counts|tp|fp|tn|fn|cal_count|cal_sum_y)",
    rf"{CELL}\..*\.count",
)
