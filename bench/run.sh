#!/usr/bin/env bash
# Portcullis throughput/latency benchmark.
#
# Measures, in one run, on this box, with the same load generator (oha) and
# the same load shape:
#   (a) the backend directly,
#   (b) nginx (Debian nginx-light) reverse-proxying to it with upstream keepalive,
#   (c) Portcullis proxying to it,
#   (d) nginx terminating mTLS (client certificate required) in front of it,
#   (e) Portcullis terminating mTLS in front of it (skip (d)+(e) with SKIP_MTLS=1),
# and prints Markdown tables (also written to bench/results/latest.md).
#
# All traffic stays on 127.0.0.1. See bench/README.md for the knobs.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
RESULTS_DIR="$SCRIPT_DIR/results"

# ---------------------------------------------------------------- knobs ----
HOST=127.0.0.1                         # fixed: load never leaves loopback
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
CONNECTIONS="${CONNECTIONS:-64}"
ROUNDS="${ROUNDS:-3}"
# PIN=1: the load generator and the backend run on LOAD_CPUS, the proxy under test alone on
# PROXY_CPUS with one worker (nginx worker_processes 1, Portcullis workers: 1). Rounds are far
# steadier, but on a 2-core box the load generator's core saturates too (both cores ~95 % busy),
# which pulls the ratio toward 1: read it with the proxy core's utilisation in mind.
# PIN=0 (default): everything shares every CPU, as the issue's "same box" comparison asks.
PIN="${PIN:-0}"
LOAD_CPUS="${LOAD_CPUS:-0}"
PROXY_CPUS="${PROXY_CPUS:-1}"
if [[ "$PIN" == 1 ]]; then
    PIN_LOAD=(taskset -c "$LOAD_CPUS")
    PIN_PROXY=(taskset -c "$PROXY_CPUS")
    NGINX_WORKERS=1
    PC_WORKERS="workers: 1"
else
    PIN_LOAD=()
    PIN_PROXY=()
    NGINX_WORKERS=auto
    PC_WORKERS=""
fi
BACKEND_PORT="${BACKEND_PORT:-18081}"
NGINX_PORT="${NGINX_PORT:-18082}"
PORTCULLIS_PORT="${PORTCULLIS_PORT:-18083}"
ADMIN_PORT="${ADMIN_PORT:-19901}"
BENCH_PATH="${BENCH_PATH:-/v1/accounts/acc-100}"
READY_TIMEOUT="${READY_TIMEOUT:-30}"   # seconds, per service
SKIP_PORTCULLIS="${SKIP_PORTCULLIS:-0}"
BACKEND_CMD="${BACKEND_CMD:-}"         # optional stand-in backend (run with bash -c)
PORTCULLIS_BIN="${PORTCULLIS_BIN:-}"
KEEP_TMP="${KEEP_TMP:-0}"
SKIP_MTLS="${SKIP_MTLS:-0}"            # 1: no mTLS rows
TLS_CONNECTIONS="${TLS_CONNECTIONS:-32}"
NGINX_TLS_PORT="${NGINX_TLS_PORT:-18443}"
PORTCULLIS_TLS_PORT="${PORTCULLIS_TLS_PORT:-18444}"
TLS_NAME=localhost                     # the dev server cert covers localhost, 127.0.0.1, ::1

MAX_SECONDS=300                        # hard cap on DURATION / WARMUP

# -------------------------------------------------------------- helpers ----
log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# "10s" | "10" | "2m" -> seconds, bounded.
to_seconds() {
    local v="$1" name="$2" n
    case "$v" in
        *[!0-9smSM]* | "") die "$name='$v' is not a duration like 10s or 1m" ;;
    esac
    if [[ "$v" =~ ^([0-9]+)[sS]?$ ]]; then
        n=$((10#${BASH_REMATCH[1]}))
    elif [[ "$v" =~ ^([0-9]+)[mM]$ ]]; then
        n=$((10#${BASH_REMATCH[1]} * 60))
    else
        die "$name='$v' is not a duration like 10s or 1m"
    fi
    ((n >= 1 && n <= MAX_SECONDS)) || die "$name must be between 1s and ${MAX_SECONDS}s (got $v)"
    echo "$n"
}

check_port_var() {
    local name="$1" v="$2"
    [[ "$v" =~ ^[0-9]+$ ]] && ((10#$v >= 1024 && 10#$v <= 65535)) \
        || die "$name='$v' must be a port number in 1024..65535"
}

# True if something already accepts connections on 127.0.0.1:$1.
port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Loopback-only curl: never go through a proxy from the environment.
lcurl() { curl --noproxy '*' --silent --show-error --max-time 2 "$@"; }

http_code() {
    lcurl -o /dev/null -w '%{http_code}' "$1" 2>/dev/null || true
}

# --------------------------------------------------- process bookkeeping ----
TMP=""
PIDS=()   # each started with setsid, so pid == process group id

start_service() { # name logfile cmd...
    local name="$1" logfile="$2"
    shift 2
    setsid "$@" >"$logfile" 2>&1 </dev/null &
    local pid=$!
    PIDS+=("$pid")
    log "started $name (pid $pid)"
    LAST_PID=$pid
}

# Running (not exited, not a zombie waiting to be reaped)?
alive() {
    local st
    st="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    st="${st##*) }"
    [[ "${st:0:1}" != Z ]]
}

stop_pid() {
    local pid="$1" i
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    # Whatever is left in that group (e.g. nginx workers): force.
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

forget_pid() {
    local pid="$1" p keep=()
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

stop_service() { # pid
    stop_pid "$1"
    forget_pid "$1"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local p
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do stop_pid "$p"; done
    if [[ -n "$TMP" && -d "$TMP" ]]; then
        if [[ "$KEEP_TMP" == 1 || $rc -ne 0 ]]; then
            log "work dir kept: $TMP"
        else
            rm -rf "$TMP"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Poll until $url answers (any HTTP status) or the process dies / time runs out.
wait_http() { # name pid url [expected_code] logfile
    local name="$1" pid="$2" url="$3" want="$4" logfile="$5" code deadline
    deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! alive "$pid"; then
            tail -n 30 "$logfile" >&2 || true
            die "$name exited before becoming ready (log: $logfile)"
        fi
        code="$(http_code "$url")"
        if [[ -n "$want" && "$code" == "$want" ]] || [[ -z "$want" && "$code" =~ ^[1-5][0-9][0-9]$ ]]; then
            return 0
        fi
        sleep 0.2
    done
    tail -n 30 "$logfile" >&2 || true
    die "$name not ready within ${READY_TIMEOUT}s ($url last answered '${code:-nothing}')"
}

require_200() { # name url
    local code
    code="$(http_code "$2")"
    [[ "$code" == 200 ]] || die "$1: GET $2 answered '$code', expected 200; refusing to benchmark an error path"
}

# GET https://localhost:PORT$BENCH_PATH over HTTP/1.1 (what oha speaks) with the dev CA
# as trust anchor; localhost is pinned to 127.0.0.1. Extra args (client cert) follow
# the port. Prints the HTTP status ('000' = no HTTP response, e.g. the TLS handshake
# was refused); curl's -v output goes to $TLS_PROBE_LOG.
TLS_PROBE_LOG=/dev/null
tls_code() { # port [curl args...]
    local port="$1"
    shift
    lcurl -v --http1.1 -o /dev/null -w '%{http_code}' --resolve "$TLS_NAME:$port:$HOST" \
        --cacert "$CERTS/ca.pem" "$@" "https://$TLS_NAME:$port$BENCH_PATH" 2>"$TLS_PROBE_LOG" || true
}

describe_refusal() { # code
    if [[ "$1" == 000 ]]; then echo "refused at the TLS layer, no HTTP response"; else echo "HTTP $1"; fi
}

# check_mtls NAME PORT PID LOGFILE: wait until the TLS port answers 200 with the dev client
# certificate, then insist that no certificate and a certificate from another CA are both
# refused (handshake failure or a 4xx). Fills MTLS_CHECK[NAME] and TLS_SESSION[NAME].
declare -A MTLS_CHECK TLS_SESSION
check_mtls() {
    local name="$1" port="$2" pid="$3" logfile="$4" code deadline no_cert rogue
    local client=(--cert "$CERTS/client.pem" --key "$CERTS/client-key.pem")
    deadline=$((SECONDS + READY_TIMEOUT))
    while :; do
        alive "$pid" || { tail -n 30 "$logfile" >&2 || true; die "$name exited (log: $logfile)"; }
        TLS_PROBE_LOG="$TMP/curl-$name-ok.log"
        code="$(tls_code "$port" "${client[@]}")"
        [[ "$code" == 200 ]] && break
        if ((SECONDS >= deadline)); then
            cat "$TLS_PROBE_LOG" >&2 || true
            tail -n 30 "$logfile" >&2 || true
            die "$name: GET https://$TLS_NAME:$port$BENCH_PATH with the dev client certificate answered '$code', expected 200 (curl -v output above)"
        fi
        sleep 0.2
    done
    TLS_SESSION[$name]="$(sed -n 's/^\* SSL connection using //p' "$TLS_PROBE_LOG" | head -n1)"

    TLS_PROBE_LOG="$TMP/curl-$name-nocert.log"
    no_cert="$(tls_code "$port")"
    TLS_PROBE_LOG="$TMP/curl-$name-rogue.log"
    rogue="$(tls_code "$port" --cert "$CERTS/rogue-client.pem" --key "$CERTS/rogue-client-key.pem")"
    TLS_PROBE_LOG=/dev/null
    [[ "$no_cert" == 000 || "$no_cert" =~ ^4[0-9][0-9]$ ]] \
        || die "$name: a request WITHOUT a client certificate answered '$no_cert' (expected a TLS handshake failure or 4xx); mTLS is not enforced, refusing to benchmark (curl -v: $TMP/curl-$name-nocert.log)"
    [[ "$rogue" == 000 || "$rogue" =~ ^4[0-9][0-9]$ ]] \
        || die "$name: a request with a client certificate from ANOTHER CA answered '$rogue' (expected a TLS handshake failure or 4xx); client certificates are not verified, refusing to benchmark (curl -v: $TMP/curl-$name-rogue.log)"
    MTLS_CHECK[$name]="no client cert: $(describe_refusal "$no_cert"); cert from another CA: $(describe_refusal "$rogue"); dev client cert: 200"
    log "$name: mTLS sanity check ok (${MTLS_CHECK[$name]}; ${TLS_SESSION[$name]:-session unknown})"
}

# ------------------------------------------------------------ validation ----
[[ "$ROUNDS" =~ ^[1-9][0-9]?$ ]] || die "ROUNDS must be 1..99"
DURATION_S="$(to_seconds "$DURATION" DURATION)"
WARMUP_S="$(to_seconds "$WARMUP" WARMUP)"
[[ "$CONNECTIONS" =~ ^[0-9]+$ ]] && ((CONNECTIONS >= 1 && CONNECTIONS <= 4096)) \
    || die "CONNECTIONS must be in 1..4096 (got $CONNECTIONS)"
check_port_var BACKEND_PORT "$BACKEND_PORT"
check_port_var NGINX_PORT "$NGINX_PORT"
check_port_var PORTCULLIS_PORT "$PORTCULLIS_PORT"
check_port_var ADMIN_PORT "$ADMIN_PORT"
[[ "$SKIP_MTLS" == 0 || "$SKIP_MTLS" == 1 ]] || die "SKIP_MTLS must be 0 or 1 (got $SKIP_MTLS)"
ALL_PORTS=("$BACKEND_PORT" "$NGINX_PORT" "$PORTCULLIS_PORT" "$ADMIN_PORT")
if [[ "$SKIP_MTLS" != 1 ]]; then
    [[ "$TLS_CONNECTIONS" =~ ^[0-9]+$ ]] && ((TLS_CONNECTIONS >= 1 && TLS_CONNECTIONS <= 4096)) \
        || die "TLS_CONNECTIONS must be in 1..4096 (got $TLS_CONNECTIONS)"
    check_port_var NGINX_TLS_PORT "$NGINX_TLS_PORT"
    check_port_var PORTCULLIS_TLS_PORT "$PORTCULLIS_TLS_PORT"
    ALL_PORTS+=("$NGINX_TLS_PORT" "$PORTCULLIS_TLS_PORT")
fi
[[ "$(printf '%s\n' "${ALL_PORTS[@]}" | sort -u | wc -l)" == "${#ALL_PORTS[@]}" ]] \
    || die "BACKEND_PORT, NGINX_PORT, PORTCULLIS_PORT, ADMIN_PORT (and NGINX_TLS_PORT, PORTCULLIS_TLS_PORT unless SKIP_MTLS=1) must all differ"
[[ "$BENCH_PATH" =~ ^/[A-Za-z0-9._~/%-]*$ ]] || die "BENCH_PATH must be a plain absolute path (got $BENCH_PATH)"
for p in "${ALL_PORTS[@]}"; do
    if port_in_use "$p"; then die "port $HOST:$p is already in use; pick another via env"; fi
done

command -v python3 >/dev/null || die "python3 is required (to parse oha's JSON)"
command -v curl >/dev/null || die "curl is required"
command -v setsid >/dev/null || die "setsid (util-linux) is required"
command -v timeout >/dev/null || die "timeout (coreutils) is required"

# ------------------------------------------------------------- installs ----
CARGO_BIN_DIR="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin"
if [[ -d "$CARGO_BIN_DIR" ]]; then PATH="$PATH:$CARGO_BIN_DIR"; fi
if ! command -v oha >/dev/null; then
    command -v cargo >/dev/null || die "oha not found and cargo is not available to install it (cargo install oha --locked)"
    log "installing oha: cargo install oha --locked (takes a few minutes)"
    cargo install oha --locked
    command -v oha >/dev/null || die "oha still not on PATH after cargo install"
fi

PATH="$PATH:/usr/sbin:/sbin"
if ! command -v nginx >/dev/null; then
    if [[ "$(id -u)" == 0 ]]; then
        log "installing nginx-light via apt-get"
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y nginx-light; then
            log "apt-get install failed; running apt-get update and retrying"
            apt-get update
            apt-get install -y nginx-light
        fi
        command -v nginx >/dev/null || die "nginx still missing after installing nginx-light"
    else
        die "nginx is not installed and this is not root. Install it with: sudo apt-get install -y nginx-light"
    fi
fi

OHA_VERSION="$(oha --version 2>/dev/null | head -n1)"
NGINX_VERSION="$(nginx -v 2>&1 | head -n1 | sed 's/^nginx version: //')"

# oha's JSON flag changed over time: newer: --output-format json; older: -j/--json.
OHA_HELP="$(oha --help 2>&1 || true)"
if grep -q -- '--output-format' <<<"$OHA_HELP"; then
    OHA_JSON=(--output-format json)
elif grep -q -- '--json' <<<"$OHA_HELP"; then
    OHA_JSON=(--json)
else
    die "installed oha ($OHA_VERSION) has neither --output-format nor --json"
fi
grep -q -- '--no-tui' <<<"$OHA_HELP" || die "installed oha ($OHA_VERSION) lacks --no-tui"
if [[ "$SKIP_MTLS" != 1 ]]; then
    for f in --cacert --cert --key --connect-to; do
        grep -q -- "$f" <<<"$OHA_HELP" \
            || die "installed oha ($OHA_VERSION) lacks $f (needed for the mTLS rows); upgrade oha or set SKIP_MTLS=1"
    done
fi
OHA_EXTRA=()
# Let in-flight requests finish at the deadline instead of counting them as errors.
if grep -q -- '--wait-ongoing-requests-after-deadline' <<<"$OHA_HELP"; then
    OHA_EXTRA+=(--wait-ongoing-requests-after-deadline)
fi

# --------------------------------------------------------- portcullis bin ----
NEED_BIN=1
# The mTLS rows need the binary for `dev-certs` even when Portcullis itself is skipped.
if [[ "$SKIP_PORTCULLIS" == 1 && -n "$BACKEND_CMD" && "$SKIP_MTLS" == 1 ]]; then NEED_BIN=0; fi
BIN=""
if ((NEED_BIN)); then
    if [[ -n "$PORTCULLIS_BIN" ]]; then
        BIN="$PORTCULLIS_BIN"
    else
        log "building Portcullis: cargo build --release (in $REPO_ROOT)"
        (cd "$REPO_ROOT" && cargo build --release)
        BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/portcullis"
        [[ "$BIN" == /* ]] || BIN="$REPO_ROOT/$BIN"
    fi
    [[ -x "$BIN" ]] || die "Portcullis binary not found or not executable: $BIN"
    [[ "$BIN" == /* ]] || BIN="$PWD/$BIN"
    # The script relies on: `portcullis run --config FILE` and the hidden
    # `portcullis backend --listen ADDR`. Check both exist before starting.
    if [[ -z "$BACKEND_CMD" ]]; then
        help="$("$BIN" backend --help 2>&1 || true)"
        grep -q -- '--listen' <<<"$help" \
            || die "$BIN does not support 'backend --listen ADDR' (hidden subcommand the benchmark needs); set BACKEND_CMD to use another backend"
    fi
    PC_VERSION="$("$BIN" --version 2>/dev/null | head -n1 || true)"
    if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
        help="$("$BIN" run --help 2>&1 || true)"
        grep -q -- '--config' <<<"$help" \
            || die "$BIN does not support 'run --config FILE'; set SKIP_PORTCULLIS=1 to measure only backend and nginx"
    fi
    if [[ "$SKIP_MTLS" != 1 ]]; then
        help="$("$BIN" dev-certs --help 2>&1 || true)"
        grep -q 'Usage:.*dev-certs' <<<"$help" \
            || die "$BIN does not support 'dev-certs DIR' (needed for the mTLS rows); set SKIP_MTLS=1"
    fi
fi

# -------------------------------------------------------------- work dir ----
TMP="$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench.XXXXXX")"
# nginx workers run as 'nobody' when the master is root: let them traverse.
chmod 0755 "$TMP"
mkdir -p "$TMP/routes" "$TMP/nginx"

CERTS="$TMP/certs"
MTLS_LISTENER=""
NGINX_TLS_SERVER=""
if [[ "$SKIP_MTLS" != 1 ]]; then
    # Dev CA + server cert (localhost, 127.0.0.1, ::1) + client cert signed by that CA,
    # plus a "rogue" client cert from another CA (used for a negative sanity check).
    "$BIN" dev-certs "$CERTS" >"$TMP/dev-certs.log" 2>&1 \
        || { cat "$TMP/dev-certs.log" >&2; die "'$BIN dev-certs $CERTS' failed"; }
    for f in ca.pem server.pem server-key.pem client.pem client-key.pem rogue-client.pem rogue-client-key.pem; do
        [[ -s "$CERTS/$f" ]] || die "dev-certs did not write $CERTS/$f"
    done
    # Paths are relative to the gateway file (which sits in $TMP).
    MTLS_LISTENER="
  - name: mtls
    address: $HOST:$PORTCULLIS_TLS_PORT
    tls:
      certificates:
        - cert: certs/server.pem
          key: certs/server-key.pem
      client_auth: required
      client_ca: [certs/ca.pem]"
    NGINX_TLS_SERVER="
    # mTLS termination: client certificate required, verified against the dev CA.
    server {
        listen $HOST:$NGINX_TLS_PORT ssl;
        ssl_certificate        $CERTS/server.pem;
        ssl_certificate_key    $CERTS/server-key.pem;
        ssl_client_certificate $CERTS/ca.pem;
        ssl_verify_client      on;
        ssl_protocols          TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
fi

cat >"$TMP/gateway.yaml" <<EOF
listeners:
  - name: public
    address: $HOST:$PORTCULLIS_PORT$MTLS_LISTENER
admin:
  address: $HOST:$ADMIN_PORT
clusters:
  accounts:
    endpoints: ["$HOST:$BACKEND_PORT"]
policies: routes
log:
  level: warn
  access: false
$PC_WORKERS
EOF

cat >"$TMP/routes/routes.yaml" <<'EOF'
routes:
  - name: get-account
    methods: [GET]
    path: /v1/accounts/{account_id}
    cluster: accounts
EOF

cat >"$TMP/nginx/nginx.conf" <<EOF
# Generated by bench/run.sh. Minimal reverse proxy with upstream keepalive.
worker_processes $NGINX_WORKERS;
daemon off;
master_process on;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path       $TMP/nginx/proxy;
    fastcgi_temp_path     $TMP/nginx/fastcgi;
    uwsgi_temp_path       $TMP/nginx/uwsgi;
    scgi_temp_path        $TMP/nginx/scgi;

    # Don't make the load generator reconnect every 1000 requests (the default).
    keepalive_requests 1000000;
    keepalive_timeout 75s;

    upstream backend {
        server $HOST:$BACKEND_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }

    server {
        listen $HOST:$NGINX_PORT;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }$NGINX_TLS_SERVER
}
EOF

# ------------------------------------------------------------------ load ----
# Run oha once in the background and wait for it, so that a signal to this
# script interrupts the wait and the EXIT trap stops oha (its own process group,
# created by timeout) along with the services.
# OHA_TLS (set by measure) adds the TLS options for the mTLS rows.
OHA_TLS=()
oha_once() { # seconds connections url out err
    local secs="$1" conns="$2" url="$3" out="$4" err="$5" pid rc=0
    timeout --kill-after=5 $((secs + 30)) \
        "${PIN_LOAD[@]+"${PIN_LOAD[@]}"}" env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY -u all_proxy \
        oha --no-tui -z "${secs}s" -c "$conns" "${OHA_JSON[@]}" "${OHA_EXTRA[@]+"${OHA_EXTRA[@]}"}" \
        "${OHA_TLS[@]+"${OHA_TLS[@]}"}" "$url" \
        >"$out" 2>"$err" </dev/null &
    pid=$!
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    forget_pid "$pid"
    return "$rc"
}

# measure NAME PORT [tls]: warm-up, measured run, parse into RPS/P50/P99/NOTE[NAME].
# With "tls": https://localhost:PORT with the dev client certificate, TLS_CONNECTIONS
# connections, and localhost pinned to 127.0.0.1 (--connect-to) so it never depends
# on how localhost resolves.
declare -A RPS P50 P99 NOTE
measure() {
    local name="$1" port="$2" mode="${3:-plain}" url out conns
    if [[ "$mode" == tls ]]; then
        url="https://$TLS_NAME:$port$BENCH_PATH"
        conns="$TLS_CONNECTIONS"
        OHA_TLS=(--cacert "$CERTS/ca.pem" --cert "$CERTS/client.pem" --key "$CERTS/client-key.pem"
            --connect-to "$TLS_NAME:$port:$HOST:$port")
    else
        url="http://$HOST:$port$BENCH_PATH"
        conns="$CONNECTIONS"
        OHA_TLS=()
    fi
    out="$TMP/oha-$name.json"
    log "$name: warm-up ${WARMUP_S}s"
    oha_once "$WARMUP_S" "$conns" "$url" "$TMP/oha-$name-warmup.json" "$TMP/oha-$name-warmup.err" \
        || { cat "$TMP/oha-$name-warmup.err" >&2; die "$name: oha warm-up failed"; }
    log "$name: measuring ${DURATION_S}s, $conns connections, GET $url"
    oha_once "$DURATION_S" "$conns" "$url" "$out" "$TMP/oha-$name.err" \
        || { cat "$TMP/oha-$name.err" >&2; die "$name: oha run failed"; }
    # oha JSON: summary.requestsPerSec; latencyPercentiles.p50/.p99 in seconds;
    # statusCodeDistribution {"200": n}; errorDistribution {"msg": n}.
    python3 - "$out" >"$TMP/result-$name.tsv" <<'PY' || die "$name: could not parse oha output $out"
import json, sys
with open(sys.argv[1]) as f:
    d = json.load(f)
s = d["summary"]
lp = d.get("latencyPercentiles") or {}
def ms(key):
    v = lp.get(key)
    return "nan" if v is None else "%.3f" % (float(v) * 1000.0)
rps = float(s.get("requestsPerSec") or 0.0)
codes = d.get("statusCodeDistribution") or {}
errors = {k: v for k, v in (d.get("errorDistribution") or {}).items()
          if "deadline" not in k.lower()}
total = sum(codes.values())
non200 = total - codes.get("200", 0)
notes = []
if total == 0:
    notes.append("no responses")
elif non200:
    notes.append("%d non-200 of %d" % (non200, total))
if errors:
    notes.append("errors: " + ", ".join("%s x%d" % (k, v) for k, v in errors.items()))
print("%.1f\t%s\t%s\t%s" % (rps, ms("p50"), ms("p99"), "; ".join(notes).replace("\t", " ") or "-"))
PY
    IFS=$'\t' read -r "RPS[$name]" "P50[$name]" "P99[$name]" "NOTE[$name]" <"$TMP/result-$name.tsv"
    log "$name: ${RPS[$name]} req/s, p50 ${P50[$name]} ms, p99 ${P99[$name]} ms"
    [[ "${NOTE[$name]}" == "-" ]] || log "WARNING: $name: ${NOTE[$name]}"
}

# --------------------------------------------------------------- backend ----
if [[ -n "$BACKEND_CMD" ]]; then
    export BACKEND_PORT
    start_service backend "$TMP/backend.log" bash -c "exec $BACKEND_CMD"
    BACKEND_LABEL="backend (BACKEND_CMD)"
    BACKEND_DESC="stand-in, BACKEND_CMD=\`$BACKEND_CMD\`"
else
    start_service backend "$TMP/backend.log" "${PIN_LOAD[@]+"${PIN_LOAD[@]}"}" "$BIN" backend --fixed --listen "$HOST:$BACKEND_PORT"
    BACKEND_LABEL="backend (portcullis backend)"
    BACKEND_DESC="\`portcullis backend --fixed --listen $HOST:$BACKEND_PORT\`"
fi
BACKEND_PID=$LAST_PID
wait_http backend "$BACKEND_PID" "http://$HOST:$BACKEND_PORT$BENCH_PATH" "" "$TMP/backend.log"
require_200 backend "http://$HOST:$BACKEND_PORT$BENCH_PATH"
measure backend "$BACKEND_PORT"

# ------------------------------------------------------- nginx, portcullis ----
# Both proxies run side by side and are measured in alternating rounds (nginx, portcullis,
# nginx, …); the table shows each one's median round, so a noisy moment on the box cannot
# favour one of them.
NGINX_ARGS=(-c "$TMP/nginx/nginx.conf" -p "$TMP/nginx/")
NGINX_HELP="$(nginx -h 2>&1 || true)"
if grep -q -- '-e filename' <<<"$NGINX_HELP"; then NGINX_ARGS+=(-e "$TMP/nginx/error.log"); fi
nginx -t -q "${NGINX_ARGS[@]}" >"$TMP/nginx/test.log" 2>&1 \
    || { cat "$TMP/nginx/test.log" >&2; die "nginx rejected the generated config ($TMP/nginx/nginx.conf)"; }
start_service nginx "$TMP/nginx/stdout.log" "${PIN_PROXY[@]+"${PIN_PROXY[@]}"}" nginx "${NGINX_ARGS[@]}"
NGINX_PID=$LAST_PID
wait_http nginx "$NGINX_PID" "http://$HOST:$NGINX_PORT$BENCH_PATH" "" "$TMP/nginx/error.log"
require_200 nginx "http://$HOST:$NGINX_PORT$BENCH_PATH"
if [[ "$SKIP_MTLS" != 1 ]]; then check_mtls nginx-mtls "$NGINX_TLS_PORT" "$NGINX_PID" "$TMP/nginx/error.log"; fi

if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
    if [[ "$SKIP_MTLS" != 1 ]] && "$BIN" validate --help >/dev/null 2>&1; then
        (cd "$TMP" && "$BIN" validate --config "$TMP/gateway.yaml") >"$TMP/validate.log" 2>&1 \
            || { cat "$TMP/validate.log" >&2; die "portcullis rejects the generated gateway.yaml with the mTLS listener ($TMP/gateway.yaml); set SKIP_MTLS=1 for a binary without TLS listeners"; }
    fi
    # cwd = work dir, so a relative `policies: routes` resolves either way.
    # shellcheck disable=SC2016  # $1/$2 are expanded by the inner bash
    start_service portcullis "$TMP/portcullis.log" \
        "${PIN_PROXY[@]+"${PIN_PROXY[@]}"}" bash -c 'cd "$1" && exec "$2" run --config "$1/gateway.yaml"' _ "$TMP" "$BIN"
    PC_PID=$LAST_PID
    wait_http portcullis "$PC_PID" "http://$HOST:$ADMIN_PORT/readyz" 200 "$TMP/portcullis.log"
    require_200 portcullis "http://$HOST:$PORTCULLIS_PORT$BENCH_PATH"
    if [[ "$SKIP_MTLS" != 1 ]]; then check_mtls portcullis-mtls "$PORTCULLIS_TLS_PORT" "$PC_PID" "$TMP/portcullis.log"; fi
fi

ROUND_LINES=()
for ((r = 1; r <= ROUNDS; r++)); do
    measure "nginx-$r" "$NGINX_PORT"
    line="| $r | ${RPS[nginx-$r]}"
    if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
        measure "portcullis-$r" "$PORTCULLIS_PORT"
        line+=" | ${RPS[portcullis-$r]} | $(python3 -c 'import sys; print("%.2f" % (float(sys.argv[1]) / float(sys.argv[2])))' "${RPS[portcullis-$r]}" "${RPS[nginx-$r]}") |"
    else
        line+=" | skipped | |"
    fi
    ROUND_LINES+=("$line")
done

# mTLS: same backend, same alternation, after the plain rounds.
MTLS_ROUND_LINES=()
if [[ "$SKIP_MTLS" != 1 ]]; then
    for ((r = 1; r <= ROUNDS; r++)); do
        measure "nginx-mtls-$r" "$NGINX_TLS_PORT" tls
        line="| $r | ${RPS[nginx-mtls-$r]}"
        if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
            measure "portcullis-mtls-$r" "$PORTCULLIS_TLS_PORT" tls
            line+=" | ${RPS[portcullis-mtls-$r]} | $(python3 -c 'import sys; print("%.2f" % (float(sys.argv[1]) / float(sys.argv[2])))' "${RPS[portcullis-mtls-$r]}" "${RPS[nginx-mtls-$r]}") |"
        else
            line+=" | skipped | |"
        fi
        MTLS_ROUND_LINES+=("$line")
    done
fi
stop_service "$NGINX_PID"
if [[ "$SKIP_PORTCULLIS" != 1 ]]; then stop_service "$PC_PID"; fi

# median NAME: the round whose req/s is the median becomes RPS/P50/P99/NOTE[NAME].
median() {
    local name="$1" best
    best="$(for ((r = 1; r <= ROUNDS; r++)); do echo "${RPS[$name-$r]} $r"; done | sort -n | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2) { print $2 }')"
    RPS[$name]="${RPS[$name-$best]}"; P50[$name]="${P50[$name-$best]}"; P99[$name]="${P99[$name-$best]}"
    NOTE[$name]="${NOTE[$name-$best]}"
}
median nginx
if [[ "$SKIP_PORTCULLIS" != 1 ]]; then median portcullis; fi
if [[ "$SKIP_MTLS" != 1 ]]; then
    median nginx-mtls
    if [[ "$SKIP_PORTCULLIS" != 1 ]]; then median portcullis-mtls; fi
fi

stop_service "$BACKEND_PID"

# ---------------------------------------------------------------- report ----
ratio() { # a b -> a/b with 2 decimals
    python3 -c 'import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print("%.2f" % (a / b) if b > 0 else "n/a")' "$1" "$2"
}
row() { # label name [reference name, default nginx]
    printf '| %s | %.0f | %s | %s | %s |\n' "$1" "${RPS[$2]}" "${P50[$2]}" "${P99[$2]}" "$(ratio "${RPS[$2]}" "${RPS[${3:-nginx}]}")"
}

GIT_REV="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no commit')"
REPORT="$(
    echo "# Portcullis benchmark"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%SZ'), commit: $GIT_REV"
    echo "- host: $(nproc) CPUs shared by load generator, backend and proxy; $(uname -sr)"
    echo "- load: $OHA_VERSION, \`oha --no-tui -z ${DURATION_S}s -c $CONNECTIONS ${OHA_JSON[*]}${OHA_EXTRA[*]:+ ${OHA_EXTRA[*]}}\`, ${WARMUP_S}s warm-up per target"
    echo "- request: GET http://$HOST:PORT$BENCH_PATH"
    if [[ "$PIN" == 1 ]]; then
        echo "- CPUs: load generator and backend pinned to $LOAD_CPUS; each proxy alone on $PROXY_CPUS with one worker (PIN=1)"
    else
        echo "- CPUs: not pinned; load generator, backend and proxy share all $(nproc) (PIN=0)"
    fi
    echo "- nginx: $NGINX_VERSION, worker_processes $NGINX_WORKERS, upstream keepalive 64"
    echo "- backend: $BACKEND_DESC"
    if [[ "$SKIP_PORTCULLIS" != 1 ]]; then echo "- portcullis: \`$BIN\` ($PC_VERSION)"; fi
    echo
    echo "Median of $ROUNDS alternating rounds for the proxies (one run for the backend):"
    echo
    echo "| target | req/s | p50 ms | p99 ms | req/s ratio vs nginx |"
    echo "|---|---:|---:|---:|---:|"
    row "$BACKEND_LABEL direct" backend
    row "nginx → backend" nginx
    if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
        row "portcullis → backend" portcullis
    else
        echo "| portcullis → backend | skipped | | | |"
    fi
    echo
    for n in backend nginx portcullis; do
        if [[ -n "${NOTE[$n]:-}" && "${NOTE[$n]}" != "-" ]]; then echo "- warning, $n: ${NOTE[$n]}"; fi
    done
    echo "Rounds (req/s):"
    echo
    echo "| round | nginx | portcullis | ratio |"
    echo "|---:|---:|---:|---:|"
    printf '%s\n' "${ROUND_LINES[@]}"
    echo
    if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
        echo "Portcullis/nginx req/s ratio (medians): $(ratio "${RPS[portcullis]}" "${RPS[nginx]}")"
    else
        echo "Portcullis/nginx req/s ratio: n/a (SKIP_PORTCULLIS=1)"
    fi
    echo
    echo "## mTLS"
    echo
    if [[ "$SKIP_MTLS" == 1 ]]; then
        echo "Skipped (SKIP_MTLS=1)."
    else
        echo "- load: \`oha --no-tui -z ${DURATION_S}s -c $TLS_CONNECTIONS ${OHA_JSON[*]}${OHA_EXTRA[*]:+ ${OHA_EXTRA[*]}} --cacert ca.pem --cert client.pem --key client-key.pem --connect-to $TLS_NAME:PORT:$HOST:PORT\`, ${WARMUP_S}s warm-up per target, HTTP/1.1 keep-alive"
        echo "- request: GET https://$TLS_NAME:PORT$BENCH_PATH (connected to $HOST; certificates from \`portcullis dev-certs\`, ECDSA P-256)"
        echo "- nginx: same instance and upstream as above, server block \`listen ssl\`, \`ssl_verify_client on\`, \`ssl_protocols TLSv1.2 TLSv1.3\`, otherwise default TLS settings"
        if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
            echo "- portcullis: same process as above, listener \`mtls\` with \`client_auth: required\`, \`client_ca: [ca.pem]\`"
        fi
        for n in nginx-mtls portcullis-mtls; do
            if [[ -n "${MTLS_CHECK[$n]:-}" ]]; then
                echo "- sanity check, $n: ${MTLS_CHECK[$n]}; curl negotiated ${TLS_SESSION[$n]:-(unknown)}"
            fi
        done
        echo
        echo "Median of $ROUNDS alternating rounds:"
        echo
        echo "| target | req/s | p50 ms | p99 ms | req/s ratio vs nginx mTLS |"
        echo "|---|---:|---:|---:|---:|"
        row "nginx mTLS → backend" nginx-mtls nginx-mtls
        if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
            row "portcullis mTLS → backend" portcullis-mtls nginx-mtls
        else
            echo "| portcullis mTLS → backend | skipped | | | |"
        fi
        echo
        for n in nginx-mtls portcullis-mtls; do
            if [[ -n "${NOTE[$n]:-}" && "${NOTE[$n]}" != "-" ]]; then echo "- warning, $n: ${NOTE[$n]}"; fi
        done
        echo "Rounds (req/s):"
        echo
        echo "| round | nginx mTLS | portcullis mTLS | ratio |"
        echo "|---:|---:|---:|---:|"
        printf '%s\n' "${MTLS_ROUND_LINES[@]}"
        echo
        if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
            echo "Portcullis/nginx mTLS req/s ratio (medians): $(ratio "${RPS[portcullis-mtls]}" "${RPS[nginx-mtls]}")"
        else
            echo "Portcullis/nginx mTLS req/s ratio: n/a (SKIP_PORTCULLIS=1)"
        fi
    fi
)"

mkdir -p "$RESULTS_DIR"
printf '%s\n' "$REPORT" >"$RESULTS_DIR/latest.md"
printf '%s\n' "$REPORT"
log "written to $RESULTS_DIR/latest.md"
