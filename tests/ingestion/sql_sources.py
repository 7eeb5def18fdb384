"""The operator's databases for the SQL connector's tests: the real PostgreSQL and MariaDB on this machine,
with a throwaway database (PostgreSQL) or table (MariaDB's `test` database) made and dropped by the tests."""

import os
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, create_engine, select, text
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.pool import NullPool

# Names carry this process's id: several runs of these tests (by other developers too) share the two servers.
SUFFIX = os.getpid()
PG_DATABASE = f"ragsite_h3_src_{SUFFIX}"
TABLE = f"h3_articles_{SUFFIX}"
READER = f"h3_reader_{SUFFIX}"
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PG_SOURCE = f"postgresql+psycopg://postgres@127.0.0.1:5432/{PG_DATABASE}"
MARIADB_SOURCE = "mysql+pymysql://root@127.0.0.1:3306/test"

articles = Table(
    TABLE, MetaData(),
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("title", String(200)),
    Column("body", Text),
    Column("readers", String(200)),
    Column("modified_at", DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
           .with_variant(postgresql.TIMESTAMP(precision=6), "postgresql")),
)
# The operator's query, as SQL text (the connector takes text); rendered here rather than typed so the table
# name is never pasted into a string.
QUERY = str(select(articles.c.id, articles.c.title, articles.c.body, articles.c.readers, articles.c.modified_at)
            .compile(compile_kwargs={"literal_binds": True}))
T0 = datetime(2024, 3, 1, 9, 0, 0, 123456)  # microseconds: the checkpoint must keep them, or rows come back
ROWS = [
    {"id": 1, "title": "Connecting to the VPN", "readers": None, "modified_at": T0,
     "body": "Install the GateKeeper client and sign in with your badge number."},
    {"id": 2, "title": "Travel and expenses", "readers": "finance", "modified_at": T0 + timedelta(hours=1),
     "body": "Train tickets are reimbursed in standard class only."},
    {"id": 3, "title": "Parental leave", "readers": "hr, finance", "modified_at": T0 + timedelta(hours=2),
     "body": "Employees receive twenty-six weeks of fully paid parental leave."},
]


class SourceDatabase:
    """The operator's database: a real server, changed the way an application would change it."""

    def __init__(self, backend: str, url: str):
        self.backend, self.url = backend, url
        self.engine = create_engine(url, poolclass=NullPool)

    def run(self, statement, params=None):
        with self.engine.begin() as conn:
            conn.execute(statement, params or {})

    def update(self, row_id: int, **values):
        self.run(articles.update().where(articles.c.id == row_id).values(**values))

    def delete(self, row_id: int):
        self.run(articles.delete().where(articles.c.id == row_id))

    def rename_column(self, old: str, new: str):
        preparer = self.engine.dialect.identifier_preparer
        self.run(text(f"ALTER TABLE {preparer.quote(TABLE)} RENAME COLUMN {preparer.quote(old)} "
                      f"TO {preparer.quote(new)}"))


@contextmanager
def pg_database():
    """A fresh PostgreSQL database of our own for the source tables."""
    server = create_engine(PG_SERVER, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {PG_DATABASE}"))
    try:
        yield PG_SOURCE
    finally:
        with server.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)"))


@contextmanager
def articles_table(backend: str, url: str):
    """The articles table holding ROWS, dropped afterwards."""
    db = SourceDatabase(backend, url)
    articles.drop(db.engine, checkfirst=True)
    articles.create(db.engine)
    db.run(articles.insert(), ROWS)
    try:
        yield db
    finally:
        articles.drop(db.engine, checkfirst=True)


@contextmanager
def mariadb_reader(password: str):
    """A MariaDB account that needs a password and may only read the articles table."""
    root = SourceDatabase("mariadb", MARIADB_SOURCE)
    hosts = ("localhost", "127.0.0.1", "%")  # whichever host entry the server matches a TCP login to
    for host in hosts:
        root.run(text(f"DROP USER IF EXISTS '{READER}'@'{host}'"))
        root.run(text(f"CREATE USER '{READER}'@'{host}' IDENTIFIED BY :pw"), {"pw": password})
        root.run(text(f"GRANT SELECT ON test.{TABLE} TO '{READER}'@'{host}'"))
    try:
        yield READER
    finally:
        for host in hosts:
            root.run(text(f"DROP USER IF EXISTS '{READER}'@'{host}'"))
