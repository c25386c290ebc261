"""Who a site node is: its name, its data, its policy, its ledger, and its fixed partition.

Everything here comes from the site (the node config of ``flower-supernode`` / ``allfed node
start``, or the simulation's own table of sites), never from the aggregator, except the study
spec, which the site checks against its policy before anything else.

A node that names no ledger keeps one at ``$FLWR_HOME/allfed/sites/<site>-<data>/ledger.sqlite``
(``FLWR_HOME`` defaults to ``~/.flwr``, the SuperNode's own state folder; ``<data>`` a short
digest of the data file's absolute path, so two sources of one node never share a partition):
every node accounts durably, whether or not its operator thought of it. Name the ledger in the
node config in production: it is the site's memory of what it spent, and moving the data file
moves the default.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import Context

from federation.client.data import SiteTable, identity_columns, load_site_table
from federation.client.ledgers import checked_ledger, held
from federation.client.partition import Partition, requested_definition
from federation.errors import AllfedError
from federation.wire import protocol as p
from federation.wire.spec import StudySpec, spec_from_run_config
from privacy.ledger import Budget, Ledger, LedgerError
from privacy.policy import PolicyError, SitePolicy, load_policy


@dataclass(frozen=True)
class SiteSettings:
    """Who this node is, where its data and ledger live, and the study it is asked to join."""

    name: str
    data: Path
    spec: StudySpec
    ledger: Path
    policy: SitePolicy = field(default_factory=SitePolicy)

    def budget(self) -> Budget:
        policy = self.policy
        return Budget(
            policy.lifetime_epsilon,
            policy.lifetime_delta,
            policy.accountant,
            policy.max_epsilon_per_run,
            policy.evaluation_cap,
        )

    def open_ledger(self) -> Ledger:
        try:
            return checked_ledger(self.ledger)
        except (LedgerError, OSError) as error:
            raise AllfedError(f"site {self.name}: {error}", "node-config", "ledger") from None


Resolver = Callable[[Context], SiteSettings]


def default_ledger(site: str, data: Path) -> Path:
    """Where a node keeps its ledger when its node config names none."""
    home = Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", site) or "site"
    source = hashlib.sha256(str(Path(data).absolute()).encode("utf-8")).hexdigest()[:12]
    return home / "allfed" / "sites" / f"{safe}-{source}" / "ledger.sqlite"


def site_policy(path: str | Path | None) -> SitePolicy:
    """The policy file's rules, or the default policy (DP required) when the site has none."""
    if not path:
        return SitePolicy()
    try:
        return load_policy(path)
    except PolicyError as error:
        raise AllfedError(str(error), "node-config", "policy") from None


def settings_from_context(context: Context) -> SiteSettings:
    """Deployment: data, name, policy and ledger from ``--node-config``, the study from the run
    config. (``flwr run`` on the local simulation engine: the site of the partition id.)"""
    node, run = context.node_config, context.run_config
    if p.NODE_DATA in node:
        data, name = str(node[p.NODE_DATA]), str(node.get(p.NODE_SITE) or f"node-{context.node_id}")
    elif "partition-id" in node and run.get(p.RUN_SITES):
        name, data = _site_of_partition(p.site_entries(run), int(node["partition-id"]))
    else:
        raise AllfedError(
            "the SuperNode needs --node-config 'data=\"PATH\"' (its site data file)",
            "node-config",
            p.NODE_DATA,
        )
    ledger = str(node.get(p.NODE_LEDGER) or "")
    policy = site_policy(str(node.get(p.NODE_POLICY) or ""))
    try:
        spec = spec_from_run_config(run)
    except AllfedError as error:
        raise AllfedError(str(error), "spec-invalid") from None
    return SiteSettings(
        name=name,
        data=Path(data),
        spec=spec,
        ledger=Path(ledger) if ledger else default_ledger(name, Path(data)),
        policy=policy,
    )


def _site_of_partition(entries: list[tuple[str, str]], partition: int) -> tuple[str, str]:
    if partition >= len(entries):
        raise AllfedError(
            f"run config 'sites' names {len(entries)} sites; node {partition} has none",
            "node-config",
            p.RUN_SITES,
        )
    return entries[partition]


def site_partition(site: SiteSettings, ledger: Ledger) -> Partition:
    """The site's fixed partition: pinned in its ledger by its first run, from its policy (or,
    at that first run only, the spec's split column or test fraction)."""
    entry = held(ledger)  # read once per ledger file this process holds open
    if entry is not None and entry.partition is not None:
        return entry.partition
    definition = ledger.partition_definition()
    if definition is None:
        columns = identity_columns(site.data, site.spec.features.na_values)
        definition = ledger.pin_partition(requested_definition(site.policy, site.spec, columns))
    partition = Partition(definition, ledger.partition_secret())
    if entry is not None:
        entry.partition = partition
    return partition


TABLES: dict[str, tuple[tuple, SiteTable]] = {}
"""path -> ((file identity and content digest, spec, partition, trainable check), table): the
site's checked tables in this process, one per file (a simulation's worker process serves many
sites in turn; a deployment's warm executor hands the table a task read to the tasks after it)."""


def site_table(site: SiteSettings, partition: Partition, trainable: bool = True) -> SiteTable:
    """The site's checked table, read once per file version, spec and partition in this process.
    A version is the file's identity, times and content digest: a file changed in place, or
    replaced by a copy that keeps its times (cp -p, rsync -t), is read and checked again."""
    digest = hashlib.sha256(partition.secret).hexdigest()
    key = (site.spec.to_toml(), repr(sorted(partition.definition.items())), digest, trainable)
    version = (_file_version(site.data), *key)
    path = str(site.data)
    if path not in TABLES or TABLES[path][0] != version:
        TABLES[path] = (version, load_site_table(site.data, site.spec, partition, trainable))
    return TABLES[path][1]


def _file_version(path: Path) -> tuple | None:
    """The file's inode, size, times and SHA-256 (None when it cannot be read: the load says
    why)."""
    try:
        stat = path.stat()
        with path.open("rb") as handle:
            content = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, content)
