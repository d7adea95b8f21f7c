# Shared helpers for scripts/*: sourced, not run.
# shellcheck shell=bash

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Installs the Debian packages whose commands are missing. Arguments: "command:package" pairs.
ensure_packages() {
    local missing=() pair cmd pkg
    for pair in "$@"; do
        cmd=${pair%%:*} pkg=${pair#*:}
        command -v "$cmd" >/dev/null 2>&1 || [ -x "$cmd" ] || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "Installing missing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Unpacks a Debian package that cannot be installed beside one the tests also need
# (syslog-ng-core and rsyslog conflict: each is "the" system log daemon) into
# ${XDG_CACHE_HOME:-~/.cache}/compartment-auditd/<package>, after installing the
# libraries it depends on. Prints that directory. Arguments: package, a path the
# unpacked package has (relative), to tell whether it is there already.
ensure_unpacked_package() {
    local pkg=$1 probe=$2 root deps tmp
    root=${XDG_CACHE_HOME:-$HOME/.cache}/compartment-auditd/$pkg
    if [ -e "$root/$probe" ]; then
        echo "$root"
        return 0
    fi
    log "Unpacking Debian package $pkg into $root (not installed: it conflicts with rsyslog)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    deps=$(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances "$pkg" | sed -n 's/^ *|\{0,1\}Depends: \([^<].*\)$/\1/p')
    # shellcheck disable=SC2086 # one package name a word
    [ -z "$deps" ] || apt-get install -y -qq --no-install-recommends $deps >/dev/null
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq "$pkg" 2>/dev/null) || { rm -rf "$tmp"; return 1; }
    mkdir -p "$(dirname "$root")"
    rm -rf "$root.tmp"
    dpkg-deb -x "$tmp"/"$pkg"_*.deb "$root.tmp"
    rm -rf "$tmp" "$root"
    mv "$root.tmp" "$root"
    echo "$root"
}

# Starts the local PostgreSQL cluster when nothing answers on 127.0.0.1:5432.
ensure_postgres() {
    ensure_packages psql:postgresql-client pg_ctlcluster:postgresql-common pg_isready:postgresql-client
    if pg_isready -q -h 127.0.0.1 -p 5432; then return 0; fi
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        ensure_packages /usr/lib/postgresql:postgresql
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    log "Starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do
        pg_isready -q -h 127.0.0.1 -p 5432 && return 0
        sleep 1
    done
    echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2
    return 1
}

# URL of the server the tests create their databases on.
test_database_url() {
    echo "${COMPARTMENT_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
}
