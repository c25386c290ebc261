"""Why a site declines, split into what may leave the site and what stays.

A reason sent to the aggregator is a word from a fixed vocabulary (which check failed) and, at
most, the spec or policy key or column it concerns; a count, a row number, a path or a value
would turn the check into a query over the site's records. The detailed message stays at the
site: its log and its ledger's audit trail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The vocabulary: check -> what the central team is told.
CHECKS = {
    # the site's policy
    "study-not-allowed": "the site's policy does not allow this study",
    "model-not-allowed": "the site's policy does not allow this model",
    "dp-required": "the site's policy requires differential privacy",
    "epsilon-above-policy": "the run's epsilon is above the site's policy",
    "delta-above-policy": "the run's delta is above the site's policy",
    # the site's ledger
    "lifetime-budget": "the site's lifetime privacy budget would be exceeded",
    "run-budget": "the run's privacy budget at the site would be exceeded",
    "plan-exhausted": "the run's admitted plan is used up",
    "no-admitted-run": "no run admitted by the site for this message",
    "run-key-in-use": "the run key is bound to another study spec at the site",
    "spec-changed": "the study spec differs from the one the site admitted",
    "resume-refused": "the site cannot resume this run",
    "partition-changed": "the site's fixed train/test partition cannot be applied",
    # the message
    "unknown-message": "the site answers no message of this kind",
    "unexpected-record": "the message carries a record the site does not accept",
    "unknown-config-key": "the message carries a setting the site does not accept",
    "bad-config-value": "a setting of the message is malformed",
    "bad-model": "the model in the message does not match the study",
    "untrusted-app": "the app's ClientApp component is not the site's installed node",
    # the site's data and setup
    "node-config": "the site node is misconfigured",
    "spec-invalid": "the study spec is invalid",
    "data-unreadable": "the site's data cannot be read",
    "missing-column": "a column the study needs is missing at the site",
    "bad-values": "a column has values of the wrong type at the site",
    "undeclared-level": "a column has values outside its declared levels at the site",
    "missing-values": "a column has missing values and the spec has no rule for them",
    "bad-label": "the label column has values that are not a binary label at the site",
    "bad-event": "the event column has values that are not 0/1 at the site",
    "bad-time": "the time column has missing, negative or non-numeric values at the site",
    "bad-consent": "the consent column has unreadable values at the site",
    "bad-split": "the split column has values other than train and test at the site",
    "no-consent": "no record at the site has consent",
    "identifier-column": "the site's file has a column that looks like a direct identifier",
    "too-few-records": "the site has too few records for the study",
    "delta-too-weak": "the run's delta is too weak for the site's size",
    "plan-infeasible": "the study's privacy budget cannot be met by its plan at the site",
    "analysis-invalid": "the analysis request is invalid",
    # an OMOP CDM site (federation.omop.errors)
    "source-config": "the site's OMOP source description is invalid",
    "database-unreachable": "the site's database cannot be reached",
    "authentication-failed": "the site's database refused its credentials",
    "permission-denied": "the site's database user may not read what the study needs",
    "missing-table": "a table the study needs is missing in the site's database",
    "cdm-version": "the site's CDM version is not one the study accepts",
    "unknown-concept": "a concept of the study is not in the site's vocabulary",
    "bad-value": "a database column holds values of the wrong type at the site",
    "bad-dates": "the site's database has dates a survival cohort cannot have",
    "empty-cohort": "the study's cohort is empty at the site",
    "database-error": "the site's database refused a query",
    "internal-error": "the site node failed; see the site's log",
}
_KEY = re.compile(r"[A-Za-z0-9_.\- ]{1,80}")


@dataclass(frozen=True)
class Refusal:
    """A check that failed: ``check`` (from ``CHECKS``) and ``key`` leave the site, ``detail``
    stays there."""

    check: str
    key: str | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        if self.check not in CHECKS:
            raise ValueError(f"unknown check {self.check!r}")

    def public(self) -> str:
        """The reason as the aggregator sees it: the check's phrase and the key, nothing else.
        A key that does not look like a spec or policy name is left out."""
        text = f"{self.check}: {CHECKS[self.check]}"
        if self.key and _KEY.fullmatch(self.key):
            text += f" ({self.key})"
        return text

    def __str__(self) -> str:
        return self.detail or self.public()


def is_public_reason(text: str) -> bool:
    """Whether ``text`` is a reason a site may send: a vocabulary phrase and at most a key."""
    check, _, rest = text.partition(": ")
    if check not in CHECKS or not rest.startswith(CHECKS[check]):
        return False
    tail = rest[len(CHECKS[check]) :]
    return tail == "" or (
        tail.startswith(" (") and tail.endswith(")") and bool(_KEY.fullmatch(tail[2:-1]))
    )
