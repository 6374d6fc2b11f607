# Sourced by .ci/run: a throwaway PostgreSQL server on 127.0.0.1 for the test suite.
# postgres_start exports CONCEPTLIB_TEST_POSTGRES (a URL with a password, so redaction is tested too);
# postgres_stop stops the server and removes its files. Debian's packages are installed when missing.

postgres_bindir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
    if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return 0; fi
    return 1
}

postgres_install() {
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
}

# Run a server binary as the owner of the data directory (initdb and postgres refuse root).
postgres_as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

postgres_start() {
    local bin
    bin=$(postgres_bindir) || { postgres_install && bin=$(postgres_bindir); } || return 1
    PG_CI_BIN=$bin
    PG_CI_DIR=$(mktemp -d /tmp/conceptlib-pg.XXXXXX)
    _postgres_init || { echo "PostgreSQL did not start; its log:" >&2; cat "$PG_CI_DIR"/*.log >&2; postgres_stop; return 1; }
}

_postgres_init() {
    local bin=$PG_CI_BIN port password
    if [ "$(id -u)" = 0 ]; then chown postgres: "$PG_CI_DIR"; fi
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    password=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
    echo "$password" > "$PG_CI_DIR/pwfile"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$PG_CI_DIR/pwfile"; fi
    postgres_as_owner "$bin/initdb" -D "$PG_CI_DIR/data" -U conceptlib --pwfile="$PG_CI_DIR/pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 >"$PG_CI_DIR/initdb.log" 2>&1 || return 1
    postgres_as_owner "$bin/pg_ctl" -D "$PG_CI_DIR/data" -l "$PG_CI_DIR/server.log" -w start \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_CI_DIR -c fsync=off" >/dev/null || return 1
    postgres_as_owner "$bin/createdb" -h "$PG_CI_DIR" -p "$port" -U conceptlib conceptlib_test || return 1
    export CONCEPTLIB_TEST_POSTGRES="postgresql+psycopg://conceptlib:$password@127.0.0.1:$port/conceptlib_test"
}

postgres_stop() {
    [ -n "${PG_CI_DIR:-}" ] || return 0
    postgres_as_owner "$PG_CI_BIN/pg_ctl" -D "$PG_CI_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_CI_DIR"
    unset PG_CI_DIR CONCEPTLIB_TEST_POSTGRES
}
