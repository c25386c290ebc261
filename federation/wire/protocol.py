"""The wire contract between the aggregator and the site nodes, in one place.

``federation.server`` and ``federation.client`` share this module and the rest of
``federation.wire`` (the spec, the queries, the evaluation release's layout) and nothing else.
It says which messages a site answers, which records and settings each may carry (anything else
is refused: default deny), and which records and keys each reply may carry (the site's
disclosure guard checks every reply against it).
"""

from urllib.parse import quote, unquote

# Message types (Flower "<category>.<action>") and the kind a site node knows each as.
CENSUS = "query.census"  # before setup: each site's public training-record count, nothing else
SETUP = "query.setup"
SCALING = "query.scaling"  # after setup: the sums of the columns whose bounds were estimated
ANALYZE = "query.analyze"  # a descriptive analysis (federation.wire.queries), answered under DP
TRAIN = "train"
EVALUATE = "evaluate"  # release 1 of an evaluation: histograms (federation.wire.evaluation)
EVALUATE_RANKS = "evaluate.ranks"  # release 2: rank sums against the aggregator's CDFs
KINDS = {
    CENSUS: "census",
    SETUP: "setup",
    SCALING: "scaling",
    ANALYZE: "analyze",
    TRAIN: "train",
    EVALUATE: "evaluate",
    EVALUATE_RANKS: "ranks",
}

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
NODE_LEDGER = "ledger"  # the site's ledger (SQLite); default: client.site.default_ledger

# Server -> site config keys.
SERVER_ROUND = "server-round"
SCALING_CENTER = "scaling-center"
SCALING_SCALE = "scaling-scale"
PROXIMAL_MU = "proximal-mu"
# The run's identity in every site's ledger (setup binds it to the spec; later messages name
# it); on a resume the rounds the server completed.
RUN_KEY = "run-key"
RESUME_AFTER = "resume-after"
# Setup: the smallest site's training-record count from the census, which the planner sizes the
# training settings the spec leaves out for (``federation.wire.spec.TrainingSection.planned``).
SMALLEST_N_TRAIN = "smallest-n-train"
# Scaling: the bounds estimated from the sites' bounds histograms, "bounds.<column>" = [low, high].
BOUNDS = "bounds"
ANALYSIS_REQUEST = "analysis-request"  # analyze config: the AnalysisRequest as JSON

# What each kind of incoming message may carry: record -> kind, and its config keys (regular
# expressions matched in full). Anything else is refused before any handler runs.
_MODEL_CONFIG = (SERVER_ROUND, RUN_KEY, SCALING_CENTER, SCALING_SCALE)
MESSAGE_RECORDS = {
    "census": {CONFIG: "config"},
    "setup": {CONFIG: "config"},
    "scaling": {CONFIG: "config"},
    "analyze": {CONFIG: "config"},
    "train": {ARRAYS: "arrays", CONFIG: "config"},
    "evaluate": {ARRAYS: "arrays", CONFIG: "config"},
    "ranks": {ARRAYS: "arrays", CONFIG: "config"},
}
MESSAGE_CONFIG = {
    "census": (RUN_KEY,),
    "setup": (RUN_KEY, RESUME_AFTER, SMALLEST_N_TRAIN),
    "scaling": (RUN_KEY, rf"{BOUNDS}\.[^.]+"),
    "analyze": (RUN_KEY, ANALYSIS_REQUEST),
    "train": (*_MODEL_CONFIG, PROXIMAL_MU),
    "evaluate": _MODEL_CONFIG,
    "ranks": (
        *_MODEL_CONFIG,
        r"ranks\.[^.]+\.[^.]+\.[^.]+\.(cdf_pos|cdf_neg|later|within|earlier_events|within_events|center)",
    ),
}

# Site -> server status (a ConfigRecord under STATUS, present in every setup and analyze reply
# and in any reply where the site declines). A reason is a phrase of privacy.refusal's fixed
# vocabulary and at most the key it concerns.
STATUS_SITE = "site"
STATUS_STATE = "state"
STATUS_REASON = "reason"
OK, REFUSED, FAILED = "ok", "refused", "failed"

# Census and setup reply metrics. The training-record count is public (FedAvg weights, the
# planner's settings and the sampling rates need it); the standardization sums are one DP
# release on the training partition.
N_TRAIN = "n-train"
SUM = "scaling-sum"
SUM_SQUARES = "scaling-sum-squares"
COUNT = "scaling-count"
STANDARDIZATION_NOISE = "standardization-noise"
# Setup, where the study leaves bounds to estimate: instead of the sums, one DP release of the
# training values' counts on a fixed grid per such column (``privacy.bounds``), and its noise.
BOUNDS_HISTOGRAMS = "bounds-histograms"
BOUNDS_NOISE = "bounds-noise"
SCALING_METRICS = (SUM, SUM_SQUARES, COUNT, STANDARDIZATION_NOISE)

# Train reply metrics: the whole whitelist.
NUM_EXAMPLES = "num-examples"
EPSILON = "epsilon"
DELTA = "delta"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
STEPS = "steps"
TRAIN_METRICS = (NUM_EXAMPLES, EPSILON, DELTA, NOISE_MULTIPLIER, SAMPLE_RATE, STEPS)

# Analyze reply metrics: EPSILON, DELTA, NOISE_MULTIPLIER and the released cells, keyed
# "cell.<stratum>.<variable>.<level>.<statistic>" (names percent-encoded); a cell absent from
# the reply was withheld at the site (a count at or under its min-cell-count). A km analysis's
# cells (statistics ``events`` and ``censored``) are noisy, unrounded and never withheld.
CELL = "cell"


def site_entries(run_config) -> list[tuple[str, str]]:
    """The run config's ``sites`` ("NAME=PATH,NAME=PATH") as (name, path) pairs, in order."""
    text = str(run_config.get(RUN_SITES) or "")
    pairs = [entry.partition("=") for entry in text.split(",") if entry.strip()]
    return [(name.strip(), path.strip()) for name, _, path in pairs]


def encode_name(name: str) -> str:
    """Percent-encoding with dots escaped too, so that a name never contains a key's separator."""
    return quote(name, safe="", errors="surrogatepass").replace(".", "%2E")


def decode_name(text: str) -> str:
    """Inverse of ``encode_name``; only canonical encodings, so two keys never mean one name."""
    name = unquote(text, errors="surrogatepass")
    if encode_name(name) != text:
        raise ValueError(f"name {text!r} is not canonically encoded")
    return name


# Disclosure whitelist: every record and key a site may send, per reply kind (regular
# expressions matched in full). The site's guard (privacy.guard) checks each reply against it.
_NAME = r"[^.]+"  # one percent-encoded name
_STATUS_KEYS = (STATUS_SITE, STATUS_STATE, STATUS_REASON)
_EVAL_CELL = rf"(pooled|group|intersection)\.{_NAME}\.{_NAME}"
REPLY_RECORDS = {
    "census": {STATUS: "config", METRICS: "metrics"},
    "setup": {STATUS: "config", METRICS: "metrics"},
    "scaling": {STATUS: "config", METRICS: "metrics"},
    "train": {STATUS: "config", ARRAYS: "arrays", METRICS: "metrics"},
    "evaluate": {STATUS: "config", METRICS: "metrics"},
    "ranks": {STATUS: "config", METRICS: "metrics"},
    "analyze": {STATUS: "config", METRICS: "metrics"},
    "refusal": {STATUS: "config"},
}
REPLY_KEYS = {
    "census": {STATUS: _STATUS_KEYS, METRICS: (N_TRAIN,)},
    "setup": {
        STATUS: _STATUS_KEYS,
        METRICS: (N_TRAIN, *SCALING_METRICS, BOUNDS_HISTOGRAMS, BOUNDS_NOISE),
    },
    "scaling": {STATUS: _STATUS_KEYS, METRICS: SCALING_METRICS},
    "train": {STATUS: _STATUS_KEYS, METRICS: TRAIN_METRICS},
    "evaluate": {
        STATUS: _STATUS_KEYS,
        METRICS: (
            EPSILON,
            NOISE_MULTIPLIER,
            rf"eval\.{_EVAL_CELL}\.(hist_pos|hist_neg|hist|records|events|residuals|squared_errors)",
        ),
    },
    "ranks": {
        STATUS: _STATUS_KEYS,
        METRICS: (
            EPSILON,
            NOISE_MULTIPLIER,
            rf"ranks\.{_EVAL_CELL}\.(rank_pos|rank_neg|concordance)",
        ),
    },
    "analyze": {
        STATUS: _STATUS_KEYS,
        METRICS: (
            EPSILON,
            DELTA,
            NOISE_MULTIPLIER,
            rf"{CELL}(\.{_NAME}){{3}}\.(count|sum|sumsq|events|censored)",
        ),
    },
    "refusal": {STATUS: _STATUS_KEYS},
}
# Keys whose values are exact counts of records: each must be 0 or above the site's
# min-cell-count. (The training-record count is public; the DP releases' noisy counts are not
# counts of anyone.)
COUNT_KEYS = (N_TRAIN, NUM_EXAMPLES, COUNT, rf"{CELL}\..*\.count")
