# Sourced by run.sh and test.sh: make sure the local servers a command needs are up.
# Each function checks first and starts a server only when none answers; it never stops one.

say() { printf '%s\n' "$*" >&2; }

ensure_redis() {
    if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return 0; fi
    if ! command -v redis-server >/dev/null 2>&1; then
        say "Redis is not reachable on 127.0.0.1:6379 and redis-server is not installed: install it (apt-get install redis-server) or set CELERY_BROKER_URL."
        return 1
    fi
    say "starting a local redis-server on 127.0.0.1:6379"
    mkdir -p var/redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir "$PWD/var/redis" --logfile "$PWD/var/redis/redis.log" >/dev/null
    for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return 0; sleep 0.1; done
    say "redis-server did not come up; see var/redis/redis.log"
    return 1
}

ensure_postgres() {
    if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then return 0; fi
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            say "installing PostgreSQL (apt-get install postgresql)"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || return 1
        else
            say "PostgreSQL is not reachable on 127.0.0.1:5432 and not installed; install it or set DATABASE_URL."
            return 1
        fi
    fi
    say "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start || true
    for _ in $(seq 1 100); do pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null && return 0; sleep 0.2; done
    say "PostgreSQL did not come up on 127.0.0.1:5432"
    return 1
}

# System packages the test suite's real peers need: the SAML IdP (Debian's simplesamlphp, served by php -S), the
# LDAP server (slapd), and the headers python-ldap builds against (BUILD_SYSTEM_PACKAGES, needed by pip). Installed only when one is missing.
BUILD_SYSTEM_PACKAGES=(libldap2-dev libsasl2-dev)
TEST_SYSTEM_PACKAGES=(simplesamlphp php-cli php-xml slapd ldap-utils "${BUILD_SYSTEM_PACKAGES[@]}")

ensure_system_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        say "missing system packages: ${missing[*]} (install them with apt-get as root)"
        return 1
    fi
    say "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_mariadb() {
    if mariadb-admin -h 127.0.0.1 -u root ping >/dev/null 2>&1; then return 0; fi
    if ! command -v mariadbd >/dev/null 2>&1; then
        say "MariaDB is not reachable on 127.0.0.1:3306 and not installed; the SQL connector tests need it."
        return 1
    fi
    say "starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    for _ in $(seq 1 100); do mariadb-admin -h 127.0.0.1 -u root ping >/dev/null 2>&1 && return 0; sleep 0.2; done
    say "MariaDB did not come up on 127.0.0.1:3306"
    return 1
}
