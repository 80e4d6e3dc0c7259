"""Node configuration: a TOML file, then LOOM_* environment variables, then flags."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from engine.core.balances import DEFAULT_FEE_ACCOUNT, instrument_asset_problem
from engine.core.domain import MAX_ACCOUNT_LEN, Asset, Instrument
from engine.exchange import SNAPSHOT_WRITERS
from engine.gateways.admission import AdmissionSettings
from engine.gateways.ws_frames import DEFAULT_SEND_BUFFER
from engine.logfmt import FORMATS as LOG_FORMATS
from engine.service import DEFAULT_MAX_QUEUED_COMMANDS

DEMO_KEYS = {f"demo-{name}-key-000000": name for name in ("alice", "bob", "carol", "dave")}
DEMO_ADMIN_KEY = "demo-admin-key-000000"
DEMO_OPS_KEYS = {"demo-ops-key-000000000": "ops"}  # read-only: dashboards and on-call
JOURNAL_RETENTION = ("keep", "archive", "delete")  # engine/journal/retention.py POLICIES
LOOKUP_INDEXES = ("file", "memory")  # engine/order_index.py


class ConfigError(ValueError):
    pass


@dataclass
class Config:
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    http_port: int = 8080
    fix_port: int = 9878  # -1 disables a listener, 0 picks a free port
    binary_port: int = 9879
    # /metrics on its own listener (engine/gateways/metrics_listener.py); -1: on the HTTP port.
    metrics_port: int = -1
    metrics_host: str = ""  # "" = host
    admin_key: str = ""
    api_keys: dict[str, str] = field(default_factory=dict)  # key -> account
    # Read-only operator keys (role "ops"), key -> name: any account's orders and traces,
    # the admin GET views; never trading or admin actions.
    ops_keys: dict[str, str] = field(default_factory=dict)
    # FIX SenderCompIDs bound to accounts ([[accounts]] fix_comp_ids), SenderCompID -> account;
    # an account with none bound may use up to fix_max_comp_ids (engine/gateways/fix/comp_ids.py).
    fix_comp_ids: dict[str, str] = field(default_factory=dict)
    fix_max_comp_ids: int = 16
    # Beneficial owners ([[accounts]] owner), account -> owner: surveillance counts a trade
    # between two accounts of one owner as a wash trade (engine/core/wash_trades.py).
    account_owners: dict[str, str] = field(default_factory=dict)
    instruments: list[Instrument] = field(default_factory=list)
    # [[assets]] balances are held in, and whether the venue checks credit (engine/core/
    # balances.py, docs/accounts.md). Journaled at start; enforced with settlement (next).
    assets: list[Asset] = field(default_factory=list)
    credit_checks: bool = True
    fee_account: str = DEFAULT_FEE_ACCOUNT  # the account maker and taker fees accrue to
    rate_limit: float = 1_000.0  # REST/WebSocket requests per second per session; 0 = off
    rate_burst: float = 2_000.0
    # Requests without valid credentials (no key, or a wrong one), per client IP; 0 = off.
    preauth_rate_limit: float = 100.0
    preauth_rate_burst: float = 200.0
    binary_rate_limit: float = 20_000.0  # binary and FIX, per session; 0 = off
    binary_rate_burst: float = 40_000.0
    # Admission control: commands waiting for the commit loop beyond which new orders are
    # refused at once (Overloaded: REST 503 OVERLOADED); cancels get a quarter more
    # (engine/service.py DEFAULT_MAX_QUEUED_COMMANDS says why 10,000).
    max_queued_commands: int = DEFAULT_MAX_QUEUED_COMMANDS
    snapshot_every_commands: int = 500_000
    snapshot_every_s: float = 300.0
    keep_snapshots: int = 3
    # [snapshots] writer: "follower" (the snapshotter process following the journal, which
    # shares no memory with the node) or "fork" (a forked child); a cluster node always forks.
    # The snapshotter process (BENCHMARKS.md, session 6: p99 1.10x with, max 0.93x, against
    # the fork's max 2.4x in the same sitting); "fork" stays selectable.
    snapshot_writer: str = "follower"
    # The standalone node's segment files after each snapshot: keep / archive / delete
    # (engine/journal/retention.py). A cluster's journal has [retention] instead.
    journal_retention: str = "keep"
    fsync: bool = True
    demo: bool = False
    demo_rate: int = 2_000
    # Cluster mode: the replicated journal and leader lease on these NATS servers (empty:
    # the embedded single node with its local journal).
    cluster: list[str] = field(default_factory=list)
    node_id: str = ""
    cluster_stream: str = "LOOM_JOURNAL"
    lease_ttl: float = 1.2
    # Cluster retention ([retention]): the leader replicates each snapshot, then purges the
    # stream behind it but for the batches holding the last `keep_commands` commands.
    retention_keep_commands: int = 100_000
    retention_keep_snapshots: int = 2  # replicated snapshots kept
    # Nor does it purge what a standby still needs, unless its position report is older than this.
    retention_standby_stale_s: float = 60.0
    # Order lookup (GET /v1/orders/{id}, by client order id) answers for the newest this many
    # order ids, finished ones too, across restarts and failovers; older ids answer 410.
    lookup_window_orders: int = 1_000_000
    # Where the compact records of those finished orders live: "file" (a scratch file in the
    # data dir, read with pread: the page cache, not the heap; ~141 bytes an order on disk,
    # 8 of heap a slot) or "memory" (~140 bytes of heap an order once the window fills).
    lookup_index: str = "file"
    # GET /v1/ledger keeps each account's newest this many entries; older pages answer 410.
    ledger_entries_per_account: int = 1000
    # Surveillance (engine/surveillance_desk.py): off the order path in a worker thread that
    # may use at most this share of one core (it falls behind, then drops, rather than compete
    # with matching); false = no surveillance at all (nothing buffered, no findings).
    surveillance: bool = True
    surveillance_cpu_share: float = 0.1
    log_format: str = "text"  # or "json" (engine/logfmt.py)
    access_log_sample: float = 0.0  # share of REST requests, WS and FIX sessions logged; 0 = off
    environment: str = "dev"  # the spans' deployment.environment
    # [market_data] (engine/market_data.py, docs/websocket.md): a WebSocket session's queue
    # bound (messages; reaching it disconnects the session with SLOW_CONSUMER), the bytes its
    # socket may buffer before the writer waits, the book's default max updates per second
    # per subscriber (0: every update, unconflated), and the days of candles kept per symbol.
    md_max_queued: int = 50_000
    md_send_buffer_bytes: int = DEFAULT_SEND_BUFFER
    md_book_max_rate: float = 0.0
    md_candle_days: int = 7
    # [admission]: connection caps per listener and per IP, login and idle deadlines, HTTP
    # timeouts, the descriptor reserve (engine/gateways/admission.py, engine/fdbudget.py).
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)


def boolean(text: str) -> bool:
    """An on/off environment variable: 1/0, true/false, on/off, yes/no."""
    word = text.strip().lower()
    if word not in ("1", "true", "on", "yes", "0", "false", "off", "no"):
        raise ValueError(text)
    return word in ("1", "true", "on", "yes")


_ENV = {
    "LOOM_DATA_DIR": ("data_dir", Path),
    "LOOM_HOST": ("host", str),
    "LOOM_HTTP_PORT": ("http_port", int),
    "LOOM_FIX_PORT": ("fix_port", int),
    "LOOM_BINARY_PORT": ("binary_port", int),
    "LOOM_METRICS_PORT": ("metrics_port", int),
    "LOOM_METRICS_HOST": ("metrics_host", str),
    "LOOM_ADMIN_KEY": ("admin_key", str),
    "LOOM_OPS_KEY": ("ops_keys", lambda key: {key: "ops"}),
    "LOOM_RATE_LIMIT": ("rate_limit", float),
    "LOOM_PREAUTH_RATE_LIMIT": ("preauth_rate_limit", float),
    "LOOM_MAX_QUEUED_COMMANDS": ("max_queued_commands", int),
    "LOOM_CLUSTER": ("cluster", lambda text: [u.strip() for u in text.split(",") if u.strip()]),
    "LOOM_NODE_ID": ("node_id", str),
    "LOOM_CLUSTER_STREAM": ("cluster_stream", str),
    "LOOM_RETENTION_KEEP_COMMANDS": ("retention_keep_commands", int),
    "LOOM_RETENTION_STANDBY_STALE_S": ("retention_standby_stale_s", float),
    "LOOM_JOURNAL_RETENTION": ("journal_retention", str),
    "LOOM_SNAPSHOT_WRITER": ("snapshot_writer", str),
    "LOOM_LOOKUP_WINDOW_ORDERS": ("lookup_window_orders", int),
    "LOOM_LOOKUP_INDEX": ("lookup_index", str),
    "LOOM_LEDGER_ENTRIES_PER_ACCOUNT": ("ledger_entries_per_account", int),
    "LOOM_SURVEILLANCE": ("surveillance", boolean),
    "LOOM_SURVEILLANCE_CPU_SHARE": ("surveillance_cpu_share", float),
    "LOOM_LOG_FORMAT": ("log_format", str),
    "LOOM_ACCESS_LOG_SAMPLE": ("access_log_sample", float),
    "LOOM_ENVIRONMENT": ("environment", str),
}


def load_config(path: str | None, env: dict[str, str] | None = None, **overrides) -> Config:
    env = dict(os.environ if env is None else env)
    cfg = Config()
    path = path or env.get("LOOM_CONFIG")
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        _apply_file(cfg, raw, path)
    for var, (name, kind) in _ENV.items():
        if var in env:
            try:
                setattr(cfg, name, kind(env[var]))
            except ValueError:
                raise ConfigError(
                    f"{var}={env[var]!r} is not a valid {getattr(kind, '__name__', 'value')}"
                ) from None
    for name, value in overrides.items():
        if value is not None:
            setattr(cfg, name, Path(value) if name == "data_dir" else value)
    if isinstance(cfg.cluster, str):
        cfg.cluster = [u.strip() for u in cfg.cluster.split(",") if u.strip()]
    _check_ports(cfg)
    if cfg.cluster and not cfg.node_id:
        raise ConfigError("cluster mode needs a node id (--node-id, LOOM_NODE_ID or node_id)")
    if cfg.cluster and not 0.3 <= cfg.lease_ttl <= 30:
        raise ConfigError(f"lease_ttl {cfg.lease_ttl} is outside 0.3..30 seconds")
    if cfg.journal_retention not in JOURNAL_RETENTION:
        raise ConfigError(
            f"journal_retention {cfg.journal_retention!r} is not one of "
            f"{', '.join(repr(p) for p in JOURNAL_RETENTION)}"
        )
    if cfg.snapshot_writer not in SNAPSHOT_WRITERS:
        raise ConfigError(
            f"[snapshots] writer {cfg.snapshot_writer!r} is not one of "
            f"{', '.join(repr(w) for w in SNAPSHOT_WRITERS)}"
        )
    if cfg.cluster and cfg.journal_retention != "keep":
        raise ConfigError(
            f"journal_retention = {cfg.journal_retention!r} applies to a standalone node's segment "
            "files; a cluster node's journal is the replicated stream (set [retention] instead)"
        )
    if cfg.retention_keep_commands < 0 or cfg.retention_keep_snapshots < 1:
        raise ConfigError("[retention] needs keep_commands >= 0 and keep_snapshots >= 1")
    if cfg.max_queued_commands < 1:
        raise ConfigError(f"max_queued_commands must be at least 1, not {cfg.max_queued_commands}")
    if cfg.log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format {cfg.log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    if not 0.0 <= cfg.access_log_sample <= 1.0:
        raise ConfigError(f"access_log_sample {cfg.access_log_sample} is outside 0..1 (0 = off, 1 = all)")
    if not cfg.environment:
        raise ConfigError("environment must not be empty (it names the deployment in spans)")
    if cfg.lookup_window_orders < 1:
        raise ConfigError(f"lookup_window_orders must be at least 1, not {cfg.lookup_window_orders}")
    if cfg.lookup_index not in LOOKUP_INDEXES:
        raise ConfigError(f"lookup_index {cfg.lookup_index!r} is not one of {', '.join(LOOKUP_INDEXES)}")
    if cfg.ledger_entries_per_account < 1:
        n = cfg.ledger_entries_per_account
        raise ConfigError(f"ledger_entries_per_account must be at least 1, not {n}")
    if not 0.0 < cfg.surveillance_cpu_share <= 1.0:
        raise ConfigError(
            f"surveillance_cpu_share {cfg.surveillance_cpu_share} is outside (0, 1] (of one core)"
        )
    if cfg.retention_standby_stale_s <= 0:
        raise ConfigError("[retention] needs standby_stale_s > 0")
    if cfg.md_max_queued < 1 or cfg.md_send_buffer_bytes < 1 or cfg.md_candle_days < 1:
        raise ConfigError("[market_data] needs max_queued, send_buffer_bytes and candle_days of at least 1")
    if not 0 <= cfg.md_book_max_rate <= 1_000:
        raise ConfigError(
            f"[market_data] book_max_rate {cfg.md_book_max_rate} is outside 0..1000 (0 = every update)"
        )
    if cfg.demo:
        if not cfg.api_keys:
            cfg.api_keys = dict(DEMO_KEYS)
        if not cfg.admin_key:
            cfg.admin_key = DEMO_ADMIN_KEY
        if not cfg.ops_keys:
            cfg.ops_keys = dict(DEMO_OPS_KEYS)
        if not cfg.instruments:
            from engine.demo import DEMO_ASSETS, DEMO_INSTRUMENTS

            cfg.instruments = list(DEMO_INSTRUMENTS)
            cfg.assets = cfg.assets or list(DEMO_ASSETS)
    assets = {a.name: a for a in cfg.assets}
    for inst in cfg.instruments:
        problem = instrument_asset_problem(inst, assets)[1]
        if problem:
            raise ConfigError(f"[[instruments]] {problem}")
    if not 0 < len(cfg.fee_account) <= MAX_ACCOUNT_LEN:
        raise ConfigError(f"fee_account must be 1-{MAX_ACCOUNT_LEN} characters, not {cfg.fee_account!r}")
    if cfg.ops_keys.keys() & (cfg.api_keys.keys() | {cfg.admin_key}):
        raise ConfigError('an ops key (role = "ops") must not also be an account\'s key or the admin key')
    for name, host in (("host", cfg.host), ("metrics_host", cfg.metrics_host)):
        if host and host not in ("127.0.0.1", "localhost", "::1") and not env.get("LOOM_ALLOW_PUBLIC_BIND"):
            raise ConfigError(
                f"{name} {host!r} is not a loopback address; set LOOM_ALLOW_PUBLIC_BIND=1 to serve beyond "
                "this machine (put TLS and a firewall in front first)"
            )
    if cfg.metrics_host and cfg.metrics_port < 0:
        raise ConfigError("metrics_host needs metrics_port (without it /metrics is on the HTTP port)")
    return cfg


MAX_PORT = 65535


def _check_ports(cfg: Config) -> None:
    """FIX (tests/test_cli_defects.py): a port beyond 65535 was passed on to bind(), which
    took it modulo 65536 (99999 listened on 34463) or, under asyncio, raised OverflowError;
    -5 was a traceback. Every listener port is 0..65535 (0: any free port); FIX and binary
    (and the metrics listener) may also be -1 (off)."""
    for name, lowest in (("http_port", 0), ("fix_port", -1), ("binary_port", -1), ("metrics_port", -1)):
        value = getattr(cfg, name)
        if not lowest <= value <= MAX_PORT:
            off = " or -1 (off)" if lowest < 0 else ""
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{name} {value} ({flag}, LOOM_{name.upper()} or the config file) is not a port: "
                f"use 0..{MAX_PORT} (0 = any free port){off}"
            )


# The TOML file's settings (examples/loom.toml documents each; tests/test_example_config.py
# checks it against these tables): top-level scalars -> type; [snapshots] and [retention]
# keys -> (Config attribute, type). Besides them: cluster, [[instruments]], [[accounts]].
FILE_SETTINGS: dict[str, type] = {
    "data_dir": Path,
    "host": str,
    "http_port": int,
    "fix_port": int,
    "binary_port": int,
    "metrics_port": int,
    "metrics_host": str,
    "admin_key": str,
    "rate_limit": float,
    "rate_burst": float,
    "preauth_rate_limit": float,
    "preauth_rate_burst": float,
    "binary_rate_limit": float,
    "binary_rate_burst": float,
    "max_queued_commands": int,
    "fsync": bool,
    "node_id": str,
    "cluster_stream": str,
    "lease_ttl": float,
    "journal_retention": str,
    "lookup_window_orders": int,
    "lookup_index": str,
    "ledger_entries_per_account": int,
    "surveillance": bool,
    "surveillance_cpu_share": float,
    "fix_max_comp_ids": int,
    "log_format": str,
    "access_log_sample": float,
    "environment": str,
    "credit_checks": bool,
    "fee_account": str,
}
SECTIONS: dict[str, dict[str, tuple[str, type]]] = {
    "market_data": {
        "max_queued": ("md_max_queued", int),
        "send_buffer_bytes": ("md_send_buffer_bytes", int),
        "book_max_rate": ("md_book_max_rate", float),
        "candle_days": ("md_candle_days", int),
    },
    "snapshots": {
        "every_commands": ("snapshot_every_commands", int),
        "every_seconds": ("snapshot_every_s", float),
        "keep": ("keep_snapshots", int),
        "writer": ("snapshot_writer", str),
    },
    "retention": {
        "keep_commands": ("retention_keep_commands", int),
        "keep_snapshots": ("retention_keep_snapshots", int),
        "standby_stale_s": ("retention_standby_stale_s", float),
    },
}
TABLES = ("cluster", "instruments", "accounts", "assets")


def _apply_file(cfg: Config, raw: dict, path: str) -> None:
    simple = FILE_SETTINGS
    for key, value in raw.items():
        # FIX (tests/test_app_run.py): a value of the wrong type (http_port = "eighty",
        # snapshots = 5, accounts = 5) raised ValueError/TypeError/AttributeError, so
        # `loom run` died with a traceback (exit 1) instead of naming the file (exit 2); and
        # a string for a boolean (fsync = "no") was truthy, i.e. silently true.
        try:
            if key in simple:
                if simple[key] is bool and not isinstance(value, bool):
                    raise TypeError(f"expected true or false, not {value!r}")
                setattr(cfg, key, simple[key](value))
            elif key == "cluster":
                urls = value.split(",") if isinstance(value, str) else list(value)
                cfg.cluster = [str(u).strip() for u in urls if str(u).strip()]
            elif key in SECTIONS:
                settings = SECTIONS[key]
                unknown = set(value) - settings.keys()
                if unknown:
                    raise ConfigError(f"{path}: unknown [{key}] setting(s) {sorted(unknown)}")
                for name, (attr, kind) in settings.items():
                    if name in value:
                        setattr(cfg, attr, kind(value[name]))
            elif key == "admission":
                if not isinstance(value, dict):
                    raise ConfigError(f"{path}: admission must be a table ([admission])")
                cfg.admission = AdmissionSettings.from_toml(value)
                cfg.admission.check()
            elif key == "instruments":
                try:
                    cfg.instruments = [Instrument(**spec) for spec in value]
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"{path}: bad [[instruments]] entry: {exc}") from None
            elif key == "assets":
                try:
                    cfg.assets = [Asset(**spec) for spec in value]
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"{path}: bad [[assets]] entry: {exc}") from None
                names = [a.name for a in cfg.assets]
                if len(set(names)) != len(names):
                    raise ConfigError(f"{path}: [[assets]] lists an asset twice: {sorted(names)}")
            elif key == "accounts":
                for entry in value:
                    if not isinstance(entry, dict) or "name" not in entry or "api_key" not in entry:
                        raise ConfigError(f"{path}: each [[accounts]] needs name and api_key")
                    key, name = str(entry["api_key"]), str(entry["name"])
                    role = entry.get("role", "trader")
                    if role not in ("trader", "ops"):
                        raise ConfigError(f"{path}: account {name!r}: role is trader or ops, not {role!r}")
                    if len(key) < 16 or not 0 < len(name) <= 64:
                        raise ConfigError(
                            f"{path}: account {name!r} needs a name of 1-64 characters and an "
                            "api_key of at least 16 characters"
                        )
                    (cfg.ops_keys if role == "ops" else cfg.api_keys)[key] = name
                    owner = entry.get("owner", "")
                    if not isinstance(owner, str) or len(owner) > 64:
                        raise ConfigError(f"{path}: account {name!r}: owner is a name of up to 64 characters")
                    if owner and cfg.account_owners.setdefault(name, owner) != owner:
                        raise ConfigError(f"{path}: account {name!r} is given two owners")
                    comp_ids = entry.get("fix_comp_ids", [])
                    if not isinstance(comp_ids, list) or not all(isinstance(c, str) and c for c in comp_ids):
                        raise ConfigError(
                            f"{path}: account {name!r}: fix_comp_ids is a list of SenderCompIDs"
                        )
                    for comp_id in comp_ids:
                        if cfg.fix_comp_ids.setdefault(comp_id, name) != name:
                            raise ConfigError(f"{path}: SenderCompID {comp_id!r} is bound to two accounts")
            else:
                raise ConfigError(f"{path}: unknown setting {key!r}")
        except ConfigError:
            raise
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{path}: bad value for {key!r}: {exc}") from None
