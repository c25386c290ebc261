"""The wire contract between the aggregator and the site nodes, in one place.

``federation.server`` and ``federation.client`` share this module (and ``scorestats`` for the
evaluation statistics) and nothing else. A train reply may carry only the model's arrays and the
metrics in ``TRAIN_METRICS``; the tests inspect real replies against this whitelist.
"""

# Message types (Flower "<category>.<action>").
SETUP = "query.setup"

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
NODE_DATA = "data"
NODE_SITE = "site"

# Server -> site config keys.
SERVER_ROUND = "server-round"
SCALING_CENTER = "scaling-center"
SCALING_SCALE = "scaling-scale"
PROXIMAL_MU = "proximal-mu"
STANDARDIZATION_NOISE = "standardization-noise"

# Site -> server status (a ConfigRecord under STATUS, present in every setup reply and in any
# reply where the site declines to do what was asked).
STATUS_SITE = "site"
STATUS_STATE = "state"
STATUS_REASON = "reason"
OK, REFUSED, FAILED = "ok", "refused", "failed"

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

# Evaluate reply: NUM_EXAMPLES plus ScoreStats under these prefixes.
SITE_STATS = "site"
GROUP_STATS = "group"
INTERSECTION_STATS = "intersection"  # pairs of group columns, as scorestats.intersect_groups
