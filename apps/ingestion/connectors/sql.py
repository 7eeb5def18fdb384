"""Rows of a SQL query (PostgreSQL through psycopg, MySQL/MariaDB through PyMySQL), one document per row.

The operator's query is never edited as text: it becomes a subquery (``SELECT ... FROM (<query>) AS ragsite_src``)
that SQLAlchemy Core filters, orders and limits, with every value a bound parameter.
"""

import logging
import string
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal

from . import egress
from .base import ConfigError, Connector, ConnectorError, RawDocument, failing_read, reject_unknown

logger = logging.getLogger(__name__)

# Scheme given -> the driver used. Only drivers this project installs; a file-backed SQLite URL would let a
# source read files on the server, so it is not offered.
DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mysql+pymysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
    "mariadb+pymysql": "mariadb+pymysql",
}
SETTINGS = {"url", "password", "query", "id_column", "modified_column", "title_column", "text_template",
            "groups_column", "connect_timeout"}
CONNECT_TIMEOUT = 10  # seconds, default
CHECK_STATEMENT_SECONDS = 30  # check() runs the query with LIMIT 0; a query that cannot even plan in this is wrong
STREAM_BATCH = 500  # rows fetched per round trip from the server-side cursor
SUBQUERY = "ragsite_src"


def _template_fields(template: str) -> list[str]:
    """Column names a text template uses; ConfigError when it does not parse or does more than name columns."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError("text_template", f"not a valid template: {exc}") from exc
    names = []
    for _literal, field, spec, _conversion in parts:
        if field is None:
            continue
        # Attribute and index access ({a.__class__}) would let a template reach into Python objects.
        if not field.isidentifier():
            raise ConfigError("text_template", f"{{{field}}} must name a column: plain names only, no "
                              "positions, attributes or indexes")
        if spec and "{" in spec:
            raise ConfigError("text_template", f"nested fields in {{{field}:{spec}}} are not supported")
        names.append(field)
    if not names:
        raise ConfigError("text_template", "must name at least one column, e.g. \"{title}\\n\\n{body}\"")
    return names


class _RowValues(dict):
    """Row values for the template: NULL renders as an empty string, not as "None"."""

    def __getitem__(self, key):
        value = super().__getitem__(key)
        return "" if value is None else value


def _encode(column: str, value) -> dict:
    """A modified-column value as a JSON checkpoint."""
    if isinstance(value, datetime):
        return {"column": column, "type": "datetime", "value": value.isoformat()}
    if isinstance(value, date):
        return {"column": column, "type": "date", "value": value.isoformat()}
    if isinstance(value, Decimal):
        return {"column": column, "type": "decimal", "value": str(value)}
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConnectorError(f"modified_column {column!r} holds {type(value).__name__} values, which cannot "
                             "order changes: use a timestamp, date, number or text column")
    return {"column": column, "type": "number" if not isinstance(value, str) else "string", "value": value}


def _decode(checkpoint: dict):
    """(value, SQLAlchemy type) for the bound parameter."""
    from sqlalchemy import Date, DateTime, Float, Integer, Numeric, String

    kind, value = checkpoint.get("type"), checkpoint.get("value")
    try:
        if kind == "datetime":
            parsed = datetime.fromisoformat(value)
            return parsed, DateTime(timezone=parsed.tzinfo is not None)
        if kind == "date":
            return date.fromisoformat(value), Date()
        if kind == "decimal":
            return Decimal(value), Numeric()
        if kind == "number" and isinstance(value, int | float):
            return value, Integer() if isinstance(value, int) else Float()
        if kind == "string" and isinstance(value, str):
            return value, String()
    except (TypeError, ValueError, ArithmeticError):
        pass
    return None, None


def _reason(exc) -> str:
    """The database's own words, first line only (psycopg appends the statement with a caret marker)."""
    orig = getattr(exc, "orig", None) or exc
    args = getattr(orig, "args", ())
    if len(args) == 2 and isinstance(args[0], int):  # PyMySQL: (errno, message)
        text = f"{args[1]} (error {args[0]})"
    else:
        text = str(orig)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


def _default_port(backend: str) -> int:
    return 5432 if backend == "postgresql" else 3306


def _connection_settings(config) -> dict:
    """The ``url`` (stored without its password) and ``password`` settings, checked."""
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.exc import ArgumentError

    from ..secrets import MASK  # here, not at the top: secrets imports this package

    raw_url = config.get("url")
    if not isinstance(raw_url, str) or not raw_url.strip():
        raise ConfigError("url", "a database URL is required, e.g. postgresql+psycopg://user:pw@host:5432/db")
    try:
        url = make_url(raw_url.strip())
    except ArgumentError:
        raise ConfigError("url", "not a database URL; expected e.g. postgresql+psycopg://user:pw@host:5432/db "
                          "or mysql+pymysql://user:pw@host:3306/db") from None
    if url.drivername not in DRIVERS:
        raise ConfigError("url", f"unsupported scheme {url.drivername!r}; use postgresql+psycopg, "
                          "mysql+pymysql or mariadb+pymysql")
    if not url.host or not url.database:
        raise ConfigError("url", "must name a host and a database")
    egress.check_host("url", url.host, url.port or _default_port(url.get_backend_name()))
    if {"password", "passwd"} & {k.lower() for k in url.query}:
        raise ConfigError("url", "put the password in the user:password part of the URL, not in its query")
    password = config.get("password")
    if url.password is not None and url.password != MASK:
        password = url.password  # typed into the URL just now: it wins over a stored one
    if password is not None and not isinstance(password, str):
        raise ConfigError("password", "must be a string")
    # The URL is stored without its password; the password is a separate, encrypted setting.
    stored_url = URL.create(DRIVERS[url.drivername], username=url.username, password=None, host=url.host,
                            port=url.port, database=url.database, query=url.query)  # set() cannot clear
    normalised = {"url": stored_url.render_as_string(hide_password=False)}
    if password:
        normalised["password"] = password
    return normalised


class SqlConnector(Connector):
    """One document per row of ``query``; incremental on ``modified_column`` when it is set."""

    incremental = True
    secret_fields = ("password",)

    @classmethod
    def validate_config(cls, config):
        reject_unknown(config, SETTINGS, "a sql source")
        normalised = _connection_settings(config)

        query = config.get("query")
        if not isinstance(query, str) or not query.strip():
            raise ConfigError("query", "a SELECT query is required")
        query = query.strip().rstrip(";").strip()  # it is wrapped in a subquery, where a ";" would end it early
        if ";" in query:
            raise ConfigError("query", "must be a single statement")
        normalised["query"] = query
        for key, required in (("id_column", True), ("modified_column", False), ("title_column", False),
                              ("groups_column", False)):
            value = config.get(key)
            if value is None and not required:
                continue
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(key, "must be the name of a column the query returns")
            normalised[key] = value.strip()
        template = config.get("text_template")
        if not isinstance(template, str) or not template.strip():
            raise ConfigError("text_template", "a template over the row's columns is required, e.g. "
                              "\"{title}\\n\\n{body}\"")
        _template_fields(template)
        normalised["text_template"] = template
        timeout = config.get("connect_timeout", CONNECT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= 300:
            raise ConfigError("connect_timeout", "must be a whole number of seconds from 1 to 300")
        if "connect_timeout" in config:
            normalised["connect_timeout"] = timeout
        return normalised

    def __init__(self, config):
        super().__init__(config)
        self._since = None
        self._latest = None  # the highest modified value seen by the current pull

    # --- connecting ---------------------------------------------------------------------------------------

    @property
    def _url(self):
        from sqlalchemy.engine import make_url

        url = make_url(self.config["url"])
        return url.set(password=self.config["password"]) if self.config.get("password") else url

    @property
    def _where(self) -> str:
        """The database named without credentials, for messages and document URIs."""
        url = self._url
        port = f":{url.port}" if url.port else ""
        return f"{url.get_backend_name()}://{url.host}{port}/{url.database}"

    def _engine(self, *, check=False):
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        url = self._url
        connect_args = {"connect_timeout": self.config.get("connect_timeout", CONNECT_TIMEOUT)}
        egress.check_before_connecting(url.host, url.port or _default_port(url.get_backend_name()))
        if check and url.get_backend_name() != "postgresql":
            connect_args["read_timeout"] = CHECK_STATEMENT_SECONDS  # PyMySQL: a socket timeout on every read
        return create_engine(url, poolclass=NullPool, connect_args=connect_args)

    @contextmanager
    def _connection(self, *, check=False):
        from sqlalchemy.exc import SQLAlchemyError

        engine = self._engine(check=check)
        try:
            try:
                conn = engine.connect()
            except SQLAlchemyError as exc:
                user = self._url.username or "(no user)"
                raise ConnectorError(f"cannot connect to {self._where} as {user}: {_reason(exc)}") from None
            with conn:
                if check and engine.dialect.name == "postgresql":
                    from sqlalchemy import text

                    # SET takes no parameters; set_config() does. Local: it ends with this transaction.
                    with self._querying():
                        conn.execute(text("SELECT set_config('statement_timeout', :ms, true)"),
                                     {"ms": str(CHECK_STATEMENT_SECONDS * 1000)})
                yield conn
        finally:
            engine.dispose()

    @contextmanager
    def _querying(self):
        from sqlalchemy.exc import SQLAlchemyError

        try:
            yield
        except SQLAlchemyError as exc:
            raise ConnectorError(f"query failed on {self._where}: {_reason(exc)}") from None

    def _base(self, names=None):
        from sqlalchemy import column, text

        clause = text(self.config["query"])
        return clause.columns(*(column(n) for n in names or ())).subquery(SUBQUERY)

    def _column_names(self, conn) -> list[str]:
        from sqlalchemy import literal_column, select

        with self._querying():
            return list(conn.execute(select(literal_column("*")).select_from(self._base()).limit(0)).keys())

    def _check_columns(self, names: list[str]):
        available = set(names)
        listed = ", ".join(names)
        for key in ("id_column", "modified_column", "title_column", "groups_column"):
            name = self.config.get(key)
            if name and name not in available:
                raise ConfigError(key, f"the query returns no column {name!r}; it returns: {listed}")
        for name in _template_fields(self.config["text_template"]):
            if name not in available:
                raise ConfigError("text_template", f"names {{{name}}}, but the query returns no column {name!r}; "
                                  f"it returns: {listed}")

    # --- the interface ------------------------------------------------------------------------------------

    def check(self):
        """Connect with a short timeout and run the query with LIMIT 0: credentials, table names, syntax and
        the configured column names are all checked without reading a row."""
        with self._connection(check=True) as conn:
            self._check_columns(self._column_names(conn))

    def documents(self, since=None):
        from sqlalchemy import bindparam, select

        modified = self.config.get("modified_column")
        self._since = since if modified and since and since.get("column") == modified else None
        self._latest = None
        with self._connection() as conn:
            names = self._column_names(conn)
            self._check_columns(names)
            base = self._base(names)
            statement = select(base)
            if self._since:
                value, type_ = _decode(self._since)
                if value is None:
                    logger.warning("unreadable sql checkpoint %r; pulling everything", self._since)
                    self._since = None
                else:
                    statement = statement.where(base.c[modified] > bindparam("since", value, type_=type_))
            if modified:
                statement = statement.order_by(base.c[modified], base.c[self.config["id_column"]])
            with self._querying():
                # A server-side cursor: rows arrive STREAM_BATCH at a time, never the whole result at once.
                result = conn.execution_options(stream_results=True, yield_per=STREAM_BATCH).execute(statement)
                for row in result:
                    values = row._mapping
                    if modified is not None:
                        self._note_modified(values[modified])
                    yield self._raw(values)

    def _note_modified(self, value):
        if value is not None and (self._latest is None or value > self._latest):
            self._latest = value

    def next_checkpoint(self):
        modified = self.config.get("modified_column")
        if not modified:
            return {}  # every sync is a full pull
        if self._latest is None:
            return dict(self._since) if self._since else {}  # nothing changed: start from the same place
        return _encode(modified, self._latest)

    def present_ids(self):
        from sqlalchemy import select

        id_column = self.config["id_column"]
        with self._connection() as conn:
            base = self._base([id_column])
            with self._querying():
                result = conn.execution_options(stream_results=True, yield_per=5000).execute(
                    select(base.c[id_column]))
                return {f"row/{value}" for (value,) in result if value is not None}

    # --- rows into documents ------------------------------------------------------------------------------

    def _raw(self, values) -> RawDocument:
        cfg = self.config
        ident = values[cfg["id_column"]]
        external_id = f"row/{ident}" if ident is not None else "row/(null)"
        uri = f"{self._where}#{external_id}"
        if ident is None:
            return RawDocument(external_id, uri, 0, None, failing_read(f"{cfg['id_column']} is NULL in this row"))
        try:
            text = cfg["text_template"].format_map(_RowValues(values))
            data = text.encode("utf-8")
        except (ValueError, TypeError, KeyError, UnicodeError) as exc:
            return RawDocument(external_id, uri, 0, None, failing_read(f"text_template cannot render this row: {exc}"))
        title = values[cfg["title_column"]] if cfg.get("title_column") else None
        modified_at = values[cfg["modified_column"]] if cfg.get("modified_column") else None
        return RawDocument(
            external_id=external_id,
            uri=uri,
            size=len(data),
            modified_at=_as_datetime(modified_at),
            read=lambda: data,
            groups=_groups(values[cfg["groups_column"]]) if cfg.get("groups_column") else None,
            content_type="text/plain",
            title=str(title)[:500] if title not in (None, "") else None,
        )


def _as_datetime(value) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


def _groups(value) -> tuple[str, ...] | None:
    """A comma-separated cell (or an array column) of group names; empty or NULL: the source's own readers."""
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    groups = tuple(sorted({str(g).strip() for g in items if str(g).strip()}))
    return groups or None

