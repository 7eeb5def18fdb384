"""A real OpenLDAP server (Debian's slapd) for the LDAP sign-in tests.

Each server lives in its own directory: a slapd.conf (mdb backend; core, cosine, inetorgperson and nis schemas),
its database, started as a child process in the foreground on a free port of 127.0.0.1, seeded with ldapadd
(passwords hashed by slappasswd), stopped by PID.

The directory has people (``ou=people``), groupOfNames groups (``ou=groups``) and a read-only service account
(``ou=services``) that the application binds as; anonymous clients may only bind, not search.
"""

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.processes import stop_process

SUFFIX = "dc=example,dc=com"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "test-root-password"  # of a throwaway test directory
SERVICE_DN = f"cn=ragsite,ou=services,{SUFFIX}"
SERVICE_PASSWORD = "test-service-password"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tool(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()),
                                      None)
    if not path:
        pytest.fail(f"`{name}` was not found: the LDAP tests run a real OpenLDAP server (`make test` installs the "
                    "slapd and ldap-utils packages; on Debian: apt-get install slapd ldap-utils)", pytrace=False)
    return path


def _module_path() -> str:
    for candidate in ("/usr/lib/ldap", "/usr/lib/x86_64-linux-gnu/ldap", "/usr/lib/aarch64-linux-gnu/ldap",
                      "/usr/lib64/openldap", "/usr/libexec/openldap"):
        if Path(candidate, "back_mdb.so").exists() or Path(candidate, "back_mdb.la").exists():
            return candidate
    return ""  # back_mdb built into slapd


def _schema_dir() -> Path:
    for candidate in ("/etc/ldap/schema", "/etc/openldap/schema"):
        if all(Path(candidate, f"{name}.schema").exists() for name in SCHEMAS):
            return Path(candidate)
    pytest.fail("the OpenLDAP schemas core, cosine, inetorgperson and nis were not found under /etc/ldap/schema",
                pytrace=False)


def hash_password(password: str) -> str:
    return subprocess.run([_tool("slappasswd"), "-h", "{SSHA}", "-s", password], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


class LdapServer:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.uri = f"ldap://127.0.0.1:{self.port}"
        self.log_path = workdir / "slapd.log"
        self.proc = None

    def _config(self) -> str:
        schemas = _schema_dir()
        modules = _module_path()
        lines = [f"include {schemas / name}.schema" for name in SCHEMAS]
        lines += [f"pidfile {self.workdir / 'slapd.pid'}", f"argsfile {self.workdir / 'slapd.args'}"]
        if modules:
            lines += [f"modulepath {modules}", "moduleload back_mdb"]
        lines += [
            "database mdb",
            "maxsize 16777216",
            f'suffix "{SUFFIX}"',
            f'rootdn "{ROOT_DN}"',
            f"rootpw {hash_password(ROOT_PASSWORD)}",
            f"directory {self.workdir / 'data'}",
            "index objectClass eq",
            "index uid,cn eq",
            "index member eq",
            # Passwords: usable to bind, readable by no one. Everything else: readable once bound.
            "access to attrs=userPassword by self =w by anonymous auth by * none",
            "access to * by users read by * none",
        ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 30):
        slapd = _tool("slapd")
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "slapd.conf"
        conf.write_text(self._config())
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        # -d 0: stay in the foreground (a child we stop by PID) without debug output.
        self.proc = subprocess.Popen([slapd, "-h", f"{self.uri}/", "-f", str(conf), "-d", "0"], stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"slapd exited with {self.proc.returncode}:\n{self.log()}", pytrace=False)
            with socket.socket() as sock:
                sock.settimeout(1)
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            time.sleep(0.1)
        else:
            self.stop()
            pytest.fail(f"slapd did not listen on {self.uri} within {timeout}s:\n{self.log()}", pytrace=False)
        self.seed()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)

    # --- content ------------------------------------------------------------------------------------------

    def _run(self, tool: str, ldif: str):
        result = subprocess.run([_tool(tool), "-x", "-H", self.uri, "-D", ROOT_DN, "-w", ROOT_PASSWORD],
                                input=ldif, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr}\n{ldif}")

    def add(self, ldif: str):
        self._run("ldapadd", ldif)

    def modify(self, ldif: str):
        self._run("ldapmodify", ldif)

    def seed(self):
        self.add(f"""dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: example
o: Example Ltd

dn: {PEOPLE}
objectClass: organizationalUnit
ou: people

dn: {GROUPS}
objectClass: organizationalUnit
ou: groups

dn: ou=services,{SUFFIX}
objectClass: organizationalUnit
ou: services

dn: {SERVICE_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: ragsite
userPassword: {hash_password(SERVICE_PASSWORD)}
""")

    def user_dn(self, uid: str) -> str:
        return f"uid={uid},{PEOPLE}"

    def group_dn(self, cn: str) -> str:
        return f"cn={cn},{GROUPS}"

    def add_user(self, uid: str, password: str, given_name: str, surname: str, mail: str):
        self.add(f"""dn: {self.user_dn(uid)}
objectClass: inetOrgPerson
objectClass: posixAccount
uid: {uid}
cn: {given_name} {surname}
givenName: {given_name}
sn: {surname}
mail: {mail}
uidNumber: {10000 + len(uid)}
gidNumber: 10000
homeDirectory: /home/{uid}
userPassword: {hash_password(password)}
""")

    def add_group(self, cn: str, members: list[str]):
        member_lines = "".join(f"member: {self.user_dn(uid)}\n" for uid in members)
        self.add(f"dn: {self.group_dn(cn)}\nobjectClass: groupOfNames\ncn: {cn}\n{member_lines}")

    def remove_member(self, cn: str, uid: str):
        self.modify(f"dn: {self.group_dn(cn)}\nchangetype: modify\ndelete: member\nmember: {self.user_dn(uid)}\n")
