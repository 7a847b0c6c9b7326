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
#   (f) HAProxy terminating mTLS and checking an RS256 bearer JWT (jwt_verify + iss/aud/exp)
#       in front of it,
#   (g) Portcullis terminating mTLS with a route `auth: jwt`, once with an RS256 and once
#       with an ES256 token (skip (f)+(g)+(h) with SKIP_JWT=1),
#   (h) authorization off vs on: Portcullis mTLS + JWT ES256 on the route of (g) (`authz:
#       { authenticated: true }`) and, in a third process, on a route with 3 scopes and 2
#       claim-based ownership rules, both with the same token (skip (h) with SKIP_AUTHZ=1),
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
# PROXY_CPUS with one worker (nginx worker_processes 1, Portcullis workers: 1, HAProxy
# nbthread 1). Rounds are far steadier, but on a 2-core box the load generator's core saturates
# too (both cores ~95 % busy), which pulls the ratio toward 1: read it with the proxy core's
# utilisation in mind.
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
# A second plain nginx row that does the header work Portcullis does on the benchmark route
# (request id and traceparent upstream, X-Forwarded-For/-Proto/-Host, request id + nosniff +
# no-store on the response), for a like-for-like reading next to bare nginx (0: no such row).
NGINX_SAME_HEADERS="${NGINX_SAME_HEADERS:-1}"
NGINX_EQ_PORT="${NGINX_EQ_PORT:-18084}"
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
SKIP_JWT="${SKIP_JWT:-0}"              # 1: no JWT rows (no HAProxy, no second Portcullis)
HAPROXY_PORT="${HAPROXY_PORT:-18445}"
PORTCULLIS_JWT_PORT="${PORTCULLIS_JWT_PORT:-18446}"
JWT_ADMIN_PORT="${JWT_ADMIN_PORT:-19902}"
SKIP_AUTHZ="${SKIP_AUTHZ:-0}"          # 1: no authz off/on rows (no third Portcullis)
PORTCULLIS_AUTHZ_PORT="${PORTCULLIS_AUTHZ_PORT:-18447}"
AUTHZ_ADMIN_PORT="${AUTHZ_ADMIN_PORT:-19903}"
JWT_ISS=https://idp.bench.test         # `iss` of the bench tokens, checked by both proxies
JWT_AUD=bench-api                      # `aud` of the bench tokens, checked by both proxies

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

# a b -> a/b with 2 decimals
ratio() {
    python3 -c 'import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print("%.2f" % (a / b) if b > 0 else "n/a")' "$1" "$2"
}

# round_stats A B: the per-round req/s ratios B-r / A-r over the rounds: their median, their mean
# and the mean's 95 % confidence interval (Student's t), so a reader sees how far the box's noise
# leaves the ratio of the medians from certain.
round_stats() {
    local a="$1" b="$2" r vals=()
    for ((r = 1; r <= ROUNDS; r++)); do vals+=("${RPS[$a-$r]:-0}" "${RPS[$b-$r]:-0}"); done
    python3 - "${vals[@]}" <<'PY'
import statistics as st, sys
v = [float(x) for x in sys.argv[1:]]
r = [b / a for a, b in zip(v[0::2], v[1::2]) if a > 0 and b > 0]
if not r:
    print("n/a")
    sys.exit()
# two-sided 95 % t quantiles for 1..30 degrees of freedom, 1.96 beyond
T = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
     2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
     2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
m = st.mean(r)
if len(r) > 1:
    h = (T[len(r) - 2] if len(r) - 1 <= len(T) else 1.96) * st.stdev(r) / len(r) ** 0.5
    ci = "95 %% confidence interval of the mean %.2f to %.2f" % (m - h, m + h)
else:
    ci = "one round: no interval"
print("median %.2f, mean %.2f (%s; %d rounds, from %.2f to %.2f)" % (st.median(r), m, ci, len(r), min(r), max(r)))
PY
}

# ------------------------------------------------------------ JWT helpers ----
# mint KEY KID ALG ISS AUD [dev-token args...]: print a compact JWT from `portcullis dev-token`
# (1 h lifetime, sub "bench"); non-zero (message in $JWT_DIR/dev-token.err) on failure.
mint() {
    local key="$1" kid="$2" alg="$3" iss="$4" aud="$5" tok
    shift 5
    tok="$("$BIN" dev-token --key "$key" --kid "$kid" --alg "$alg" --iss "$iss" --aud "$aud" \
        --sub bench --ttl 1h "$@" 2>"$JWT_DIR/dev-token.err")" || return 1
    tok="$(tr -d '[:space:]' <<<"$tok")"
    [[ "$tok" =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]] \
        || { echo "dev-token printed something that is not a compact JWT" >"$JWT_DIR/dev-token.err"; return 1; }
    printf '%s' "$tok"
}

# mint_or_die VAR KEY KID ALG [ISS AUD [dev-token args...]]
mint_or_die() {
    local var="$1" key="$2" kid="$3" alg="$4" iss="${5:-$JWT_ISS}" aud="${6:-$JWT_AUD}" tok
    tok="$(mint "$key" "$kid" "$alg" "$iss" "$aud" "${@:7}")" \
        || { cat "$JWT_DIR/dev-token.err" >&2; die "'$BIN dev-token --key $key --kid $kid --alg $alg ...' failed"; }
    printf -v "$var" '%s' "$tok"
}

# The claim NAME of a compact JWT's payload (empty if absent).
jwt_claim() { # token name
    python3 -c '
import base64, json, sys
p = sys.argv[1].split(".")[1]
v = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))).get(sys.argv[2])
print("" if v is None else v)' "$1" "$2" 2>/dev/null || true
}

# The tokens of the sanity checks (the measured rows mint fresh ones every round).
mint_check_tokens() {
    local now exp
    mint_or_die TOK_RS "$JWT_DIR/bench-rs256.pem" bench-rs256 RS256
    mint_or_die TOK_ES "$ES_KEY" bench-es256 ES256
    mint_or_die TOK_RS_BADSIG "$JWT_DIR/other-rs256.pem" bench-rs256 RS256
    mint_or_die TOK_ES_BADSIG "$JWT_DIR/other-es256.pem" bench-es256 ES256
    mint_or_die TOK_WRONG_AUD "$JWT_DIR/bench-rs256.pem" bench-rs256 RS256 "$JWT_ISS" other-api
    mint_or_die TOK_WRONG_ISS "$JWT_DIR/bench-rs256.pem" bench-rs256 RS256 https://other-idp.bench.test "$JWT_AUD"
    # Expired 10 minutes ago (beyond any leeway), if dev-token lets --claim override exp.
    now="$(date +%s)"
    TOK_EXPIRED=""
    if TOK_EXPIRED="$(mint "$JWT_DIR/bench-rs256.pem" bench-rs256 RS256 "$JWT_ISS" "$JWT_AUD" \
        --claim "iat=$((now - 1200))" --claim "nbf=$((now - 1200))" --claim "exp=$((now - 600))")"; then
        exp="$(jwt_claim "$TOK_EXPIRED" exp)"
        if ! [[ "$exp" =~ ^[0-9]+$ ]] || ((exp >= now)); then TOK_EXPIRED=""; fi
    else
        TOK_EXPIRED=""
    fi
    [[ -n "$TOK_EXPIRED" ]] || log "dev-token --claim exp=... did not give an expired token; the expired-token check is skipped"
}

# jwt_probe NAME TAG PORT TOKEN [curl args...]: GET https://localhost:PORT$BENCH_PATH (HTTP/1.1,
# dev CA trusted) with `Authorization: Bearer TOKEN` unless TOKEN is empty. Prints the status
# ('000' = no HTTP response); body, headers and curl -v output go to $TMP/probe-NAME-TAG.*.
# PROBE_PATH, when set, replaces $BENCH_PATH (the authz checks' other account).
PROBE_PATH=""
jwt_probe() {
    local name="$1" tag="$2" port="$3" token="$4" base="$TMP/probe-$1-$2" auth=()
    shift 4
    if [[ -n "$token" ]]; then auth=(-H "Authorization: Bearer $token"); fi
    lcurl -v --http1.1 -o "$base.body" -D "$base.headers" -w '%{http_code}' \
        --resolve "$TLS_NAME:$port:$HOST" --cacert "$CERTS/ca.pem" "$@" "${auth[@]+"${auth[@]}"}" \
        "https://$TLS_NAME:$port${PROBE_PATH:-$BENCH_PATH}" 2>"$base.curl" || true
}

# `reason` of a Portcullis problem+json body ('?' if there is none).
problem_reason() { # file
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("reason") or "?")' "$1" 2>/dev/null || echo '?'
}

# check_jwt NAME PORT PID LOGFILE KIND(haproxy|portcullis): wait until a good RS256 token with
# the dev client certificate answers 200, then insist on a refusal without a client
# certificate and for every bad token. A 2xx/3xx/5xx to a bad token stops the script; a 4xx
# other than 401 (or, for Portcullis, another `reason` than the spec's) is recorded in
# JWT_DEVIATION[NAME] and printed. Fills JWT_CHECK[NAME] and TLS_SESSION[NAME].
declare -A JWT_CHECK JWT_DEVIATION
check_jwt() {
    local name="$1" port="$2" pid="$3" logfile="$4" kind="$5" code deadline
    local client=(--cert "$CERTS/client.pem" --key "$CERTS/client-key.pem")
    JWT_CHECK[$name]=""
    JWT_DEVIATION[$name]=""
    deadline=$((SECONDS + READY_TIMEOUT))
    while :; do
        alive "$pid" || { tail -n 30 "$logfile" >&2 || true; die "$name exited (log: $logfile)"; }
        code="$(jwt_probe "$name" ok-rs256 "$port" "$TOK_RS" "${client[@]}")"
        [[ "$code" == 200 ]] && break
        if ((SECONDS >= deadline)); then
            cat "$TMP/probe-$name-ok-rs256.curl" >&2 || true
            tail -n 30 "$logfile" >&2 || true
            die "$name: GET https://$TLS_NAME:$port$BENCH_PATH with the dev client certificate and a good RS256 token answered '$code', expected 200 (curl -v output above, body: $TMP/probe-$name-ok-rs256.body)"
        fi
        sleep 0.2
    done
    TLS_SESSION[$name]="$(sed -n 's/^\* SSL connection using //p' "$TMP/probe-$name-ok-rs256.curl" | head -n1)"

    code="$(jwt_probe "$name" nocert "$port" "$TOK_RS")"
    [[ "$code" == 000 || "$code" =~ ^4[0-9][0-9]$ ]] \
        || die "$name: a request with a good token but WITHOUT a client certificate answered '$code' (expected a TLS handshake failure or 4xx); mTLS is not enforced, refusing to benchmark (curl -v: $TMP/probe-$name-nocert.curl)"
    JWT_CHECK[$name]="no client cert (good token): $(describe_refusal "$code")"

    # refused TAG DESCRIPTION TOKEN REASON: must be a 4xx; 401 (and REASON) expected.
    refused() {
        local tag="$1" desc="$2" token="$3" want="$4" got reason
        code="$(jwt_probe "$name" "$tag" "$port" "$token" "${client[@]}")"
        [[ "$code" =~ ^4[0-9][0-9]$ ]] \
            || die "$name: $desc answered '$code' (expected 401); the JWT check is not enforced, refusing to benchmark (curl -v: $TMP/probe-$name-$tag.curl)"
        got="HTTP $code"
        if [[ "$kind" == portcullis ]]; then
            reason="$(problem_reason "$TMP/probe-$name-$tag.body")"
            got+=" \`$reason\`"
            if [[ "$code" != 401 || "$reason" != "$want" ]]; then
                JWT_DEVIATION[$name]+="; $desc: got $got, spec says 401 \`$want\`"
            fi
        elif [[ "$code" != 401 ]]; then
            JWT_DEVIATION[$name]+="; $desc: got $got, configured 401"
        fi
        JWT_CHECK[$name]+="; $desc: $got"
    }
    refused missing "no token" "" missing
    if [[ "$kind" == portcullis ]]; then
        # Spec: no `error=` in WWW-Authenticate when no token was sent; problem+json body.
        local hdrs="$TMP/probe-$name-missing.headers"
        if ! grep -qi '^www-authenticate: *Bearer realm="portcullis"' "$hdrs" || grep -qi '^www-authenticate:.*error=' "$hdrs"; then
            JWT_DEVIATION[$name]+="; no token: WWW-Authenticate is not 'Bearer realm=\"portcullis\"' without error= (headers: $hdrs)"
        fi
        if ! grep -qi '^content-type: *application/problem+json' "$hdrs"; then
            JWT_DEVIATION[$name]+="; no token: Content-Type is not application/problem+json"
        fi
    fi
    refused badsig-rs256 "RS256 token signed by another key (same kid)" "$TOK_RS_BADSIG" bad_signature
    refused wrong-aud "wrong aud" "$TOK_WRONG_AUD" wrong_audience
    refused wrong-iss "wrong iss" "$TOK_WRONG_ISS" unknown_issuer
    if [[ -n "$TOK_EXPIRED" ]]; then refused expired "expired 10 min ago" "$TOK_EXPIRED" expired; fi
    if [[ "$kind" == portcullis ]]; then
        refused badsig-es256 "ES256 token signed by another key (same kid)" "$TOK_ES_BADSIG" bad_signature
        code="$(jwt_probe "$name" ok-es256 "$port" "$TOK_ES" "${client[@]}")"
        [[ "$code" == 200 ]] \
            || die "$name: a good ES256 token answered '$code', expected 200 (body: $TMP/probe-$name-ok-es256.body)"
        JWT_CHECK[$name]+="; good RS256 token: 200; good ES256 token: 200"
    else
        # HAProxy is configured for RS256 only.
        refused es256 "ES256 token (alg not RS256)" "$TOK_ES" -
        JWT_CHECK[$name]+="; good RS256 token: 200"
    fi
    JWT_DEVIATION[$name]="${JWT_DEVIATION[$name]#; }"
    log "$name: JWT sanity check ok (${JWT_CHECK[$name]}; ${TLS_SESSION[$name]:-session unknown})"
    if [[ -n "${JWT_DEVIATION[$name]}" ]]; then log "WARNING: $name: ${JWT_DEVIATION[$name]}"; fi
}

# ---------------------------------------------------------- authz helpers ----
# The authz off/on rows: one ES256 token that every rule of the authz route accepts (scopes
# a b c; the account of $BENCH_PATH in `accounts`; `account_prefix` a prefix of that account),
# sent to the route with `authz: { authenticated: true }` (off) and to the route with 3 scopes
# and 2 ownership rules (on).
# mint_authz VAR [SCOPE [PREFIX]]: such a token, or one with other scopes / another prefix.
mint_authz() {
    local var="$1" scope="${2:-a b c}" prefix="${3:-$AUTHZ_PREFIX}"
    mint_or_die "$var" "$ES_KEY" bench-es256 ES256 "$JWT_ISS" "$JWT_AUD" \
        --scope "$scope" --tenant bench --claim "accounts=[\"$AUTHZ_ACCOUNT\"]" \
        --claim "account_prefix=\"$prefix\""
}

# check_authz PID LOGFILE: wait until the authz route answers 200 to the authz token, then
# insist that it refuses the other account (404), a token without scope c (403) and a token
# whose account_prefix does not fit (404); and that the authz-off route (the JWT process)
# answers 200 to the authz token, for both accounts. Fills AUTHZ_CHECK.
AUTHZ_CHECK=""
check_authz() {
    local pid="$1" logfile="$2" name=portcullis-authz port="$PORTCULLIS_AUTHZ_PORT" code deadline
    local client=(--cert "$CERTS/client.pem" --key "$CERTS/client-key.pem")
    local tok_2scopes tok_noprefix
    deadline=$((SECONDS + READY_TIMEOUT))
    while :; do
        alive "$pid" || { tail -n 30 "$logfile" >&2 || true; die "$name exited (log: $logfile)"; }
        code="$(jwt_probe "$name" ok "$port" "$TOK_AUTHZ" "${client[@]}")"
        [[ "$code" == 200 ]] && break
        if ((SECONDS >= deadline)); then
            cat "$TMP/probe-$name-ok.curl" >&2 || true
            tail -n 30 "$logfile" >&2 || true
            die "$name: GET https://$TLS_NAME:$port$BENCH_PATH with the dev client certificate and the authz token answered '$code', expected 200 (curl -v output above, body: $TMP/probe-$name-ok.body)"
        fi
        sleep 0.2
    done
    TLS_SESSION[$name]="$(sed -n 's/^\* SSL connection using //p' "$TMP/probe-$name-ok.curl" | head -n1)"
    AUTHZ_CHECK="authz on: $BENCH_PATH → 200"

    # expect_code TAG DESCRIPTION PORT TOKEN PATH WANT
    expect_code() {
        local tag="$1" desc="$2" p="$3" token="$4" path="$5" want="$6" n=portcullis-authz reason
        [[ "$p" == "$port" ]] || n=portcullis-jwt
        code="$(PROBE_PATH="$path" jwt_probe "$n" "$tag" "$p" "$token" "${client[@]}")"
        [[ "$code" == "$want" ]] \
            || die "$n: $desc answered '$code', expected $want; refusing to benchmark (curl -v: $TMP/probe-$n-$tag.curl, body: $TMP/probe-$n-$tag.body)"
        AUTHZ_CHECK+="; $desc → $code"
        if [[ "$code" == 403 ]]; then
            reason="$(problem_reason "$TMP/probe-$n-$tag.body")"
            AUTHZ_CHECK+=" \`$reason\`"
        fi
    }
    mint_authz tok_2scopes "a b"
    mint_authz tok_noprefix "a b c" nomatch
    expect_code other-account "authz on: $AUTHZ_DENY_PATH (not in \`accounts\`)" "$port" "$TOK_AUTHZ" "$AUTHZ_DENY_PATH" 404
    expect_code two-scopes "authz on: token with scopes a b only" "$port" "$tok_2scopes" "$BENCH_PATH" 403
    expect_code no-prefix "authz on: token with account_prefix nomatch" "$port" "$tok_noprefix" "$BENCH_PATH" 404
    expect_code authz-off "authz off: $BENCH_PATH" "$PORTCULLIS_JWT_PORT" "$TOK_AUTHZ" "$BENCH_PATH" 200
    expect_code authz-off-other "authz off: $AUTHZ_DENY_PATH" "$PORTCULLIS_JWT_PORT" "$TOK_AUTHZ" "$AUTHZ_DENY_PATH" 200
    log "$name: authz sanity check ok ($AUTHZ_CHECK)"
}

# Portcullis's verified-token cache counters (admin /metrics): prints "HITS MISSES" or "? ?".
jwt_cache_counts() {
    lcurl "http://$HOST:$JWT_ADMIN_PORT/metrics" 2>/dev/null | python3 -c '
import re, sys
c = {}
for line in sys.stdin:
    m = re.match(r"portcullis_jwt_cache_total\{[^}]*result=\"(hit|miss)\"[^}]*\}\s+([0-9.eE+]+)", line)
    if m:
        c[m.group(1)] = int(float(m.group(2)))
print(c.get("hit", "?"), c.get("miss", "?"))' 2>/dev/null || echo '? ?'
}

# ------------------------------------------------------------ validation ----
[[ "$ROUNDS" =~ ^[1-9][0-9]?$ ]] || die "ROUNDS must be 1..99"
DURATION_S="$(to_seconds "$DURATION" DURATION)"
WARMUP_S="$(to_seconds "$WARMUP" WARMUP)"
[[ "$CONNECTIONS" =~ ^[0-9]+$ ]] && ((CONNECTIONS >= 1 && CONNECTIONS <= 4096)) \
    || die "CONNECTIONS must be in 1..4096 (got $CONNECTIONS)"
check_port_var BACKEND_PORT "$BACKEND_PORT"
check_port_var NGINX_PORT "$NGINX_PORT"
[[ "$NGINX_SAME_HEADERS" == 0 || "$NGINX_SAME_HEADERS" == 1 ]] || die "NGINX_SAME_HEADERS must be 0 or 1 (got $NGINX_SAME_HEADERS)"
check_port_var PORTCULLIS_PORT "$PORTCULLIS_PORT"
check_port_var ADMIN_PORT "$ADMIN_PORT"
[[ "$SKIP_MTLS" == 0 || "$SKIP_MTLS" == 1 ]] || die "SKIP_MTLS must be 0 or 1 (got $SKIP_MTLS)"
[[ "$SKIP_JWT" == 0 || "$SKIP_JWT" == 1 ]] || die "SKIP_JWT must be 0 or 1 (got $SKIP_JWT)"
[[ "$SKIP_AUTHZ" == 0 || "$SKIP_AUTHZ" == 1 ]] || die "SKIP_AUTHZ must be 0 or 1 (got $SKIP_AUTHZ)"
# The authz off/on rows: part of the JWT section, Portcullis only.
AUTHZ_ROWS=0
if [[ "$SKIP_JWT" != 1 && "$SKIP_AUTHZ" != 1 && "$SKIP_PORTCULLIS" != 1 ]]; then AUTHZ_ROWS=1; fi
# The mTLS and the JWT rows both need the dev certificates and a TLS-capable oha.
NEED_TLS=0
if [[ "$SKIP_MTLS" != 1 || "$SKIP_JWT" != 1 ]]; then NEED_TLS=1; fi
ALL_PORTS=("$BACKEND_PORT" "$NGINX_PORT" "$PORTCULLIS_PORT" "$ADMIN_PORT")
if [[ "$NGINX_SAME_HEADERS" == 1 ]]; then
    check_port_var NGINX_EQ_PORT "$NGINX_EQ_PORT"
    ALL_PORTS+=("$NGINX_EQ_PORT")
fi
if ((NEED_TLS)); then
    [[ "$TLS_CONNECTIONS" =~ ^[0-9]+$ ]] && ((TLS_CONNECTIONS >= 1 && TLS_CONNECTIONS <= 4096)) \
        || die "TLS_CONNECTIONS must be in 1..4096 (got $TLS_CONNECTIONS)"
fi
if [[ "$SKIP_MTLS" != 1 ]]; then
    check_port_var NGINX_TLS_PORT "$NGINX_TLS_PORT"
    check_port_var PORTCULLIS_TLS_PORT "$PORTCULLIS_TLS_PORT"
    ALL_PORTS+=("$NGINX_TLS_PORT" "$PORTCULLIS_TLS_PORT")
fi
if [[ "$SKIP_JWT" != 1 ]]; then
    check_port_var HAPROXY_PORT "$HAPROXY_PORT"
    check_port_var PORTCULLIS_JWT_PORT "$PORTCULLIS_JWT_PORT"
    check_port_var JWT_ADMIN_PORT "$JWT_ADMIN_PORT"
    ALL_PORTS+=("$HAPROXY_PORT" "$PORTCULLIS_JWT_PORT" "$JWT_ADMIN_PORT")
fi
if ((AUTHZ_ROWS)); then
    check_port_var PORTCULLIS_AUTHZ_PORT "$PORTCULLIS_AUTHZ_PORT"
    check_port_var AUTHZ_ADMIN_PORT "$AUTHZ_ADMIN_PORT"
    ALL_PORTS+=("$PORTCULLIS_AUTHZ_PORT" "$AUTHZ_ADMIN_PORT")
fi
[[ "$(printf '%s\n' "${ALL_PORTS[@]}" | sort -u | wc -l)" == "${#ALL_PORTS[@]}" ]] \
    || die "BACKEND_PORT, NGINX_PORT, PORTCULLIS_PORT, ADMIN_PORT (and NGINX_EQ_PORT unless NGINX_SAME_HEADERS=0; NGINX_TLS_PORT, PORTCULLIS_TLS_PORT unless SKIP_MTLS=1; HAPROXY_PORT, PORTCULLIS_JWT_PORT, JWT_ADMIN_PORT unless SKIP_JWT=1; PORTCULLIS_AUTHZ_PORT, AUTHZ_ADMIN_PORT unless SKIP_AUTHZ=1) must all differ"
[[ "$BENCH_PATH" =~ ^/[A-Za-z0-9._~/%-]*$ ]] || die "BENCH_PATH must be a plain absolute path (got $BENCH_PATH)"
if ((AUTHZ_ROWS)); then
    # The authz route's ownership rules read the account id from the path; the token lists it.
    [[ "$BENCH_PATH" =~ ^/v1/accounts/([A-Za-z0-9._~-]+)$ ]] \
        || die "the authz rows need BENCH_PATH=/v1/accounts/ID (ID of [A-Za-z0-9._~-]; got $BENCH_PATH); set SKIP_AUTHZ=1 for another path"
    AUTHZ_ACCOUNT="${BASH_REMATCH[1]}"
    AUTHZ_PREFIX="${AUTHZ_ACCOUNT%%-*}"    # acc-100 -> acc: the template `{account_prefix}*` fits
    AUTHZ_DENY_PATH=/v1/accounts/acc-200   # not in the token's `accounts`: must answer 404
    if [[ "$AUTHZ_ACCOUNT" == acc-200 ]]; then AUTHZ_DENY_PATH=/v1/accounts/acc-201; fi
fi
for p in "${ALL_PORTS[@]}"; do
    if port_in_use "$p"; then die "port $HOST:$p is already in use; pick another via env"; fi
done

command -v python3 >/dev/null || die "python3 is required (to parse oha's JSON)"
command -v curl >/dev/null || die "curl is required"
command -v setsid >/dev/null || die "setsid (util-linux) is required"
command -v timeout >/dev/null || die "timeout (coreutils) is required"
if [[ "$SKIP_JWT" != 1 ]]; then
    command -v openssl >/dev/null || die "openssl is required for the JWT rows (RSA key); install it or set SKIP_JWT=1"
fi

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

HAPROXY_VERSION=""
if [[ "$SKIP_JWT" != 1 ]]; then
    if ! command -v haproxy >/dev/null; then
        if [[ "$(id -u)" == 0 ]]; then
            log "installing haproxy via apt-get"
            export DEBIAN_FRONTEND=noninteractive
            if ! apt-get install -y haproxy; then
                log "apt-get install failed; running apt-get update and retrying"
                apt-get update
                apt-get install -y haproxy
            fi
            command -v haproxy >/dev/null || die "haproxy still missing after apt-get install haproxy"
        else
            die "haproxy is not installed and this is not root. Install it with: sudo apt-get install -y haproxy (or set SKIP_JWT=1)"
        fi
    fi
    # "HAProxy version 2.6.12-1+deb12u3 2025/10/03 - https://haproxy.org/"
    # (Read all of it first: `haproxy -v | head -n1` would die of SIGPIPE under pipefail.)
    HAPROXY_V="$(haproxy -v 2>&1 || true)"
    HAPROXY_VERSION="$(sed -n '1s/^HA-\{0,1\}Proxy version \([^ ]*\).*/\1/p' <<<"$HAPROXY_V")"
    [[ "$HAPROXY_VERSION" =~ ^([0-9]+)\.([0-9]+) ]] || die "could not read the HAProxy version from 'haproxy -v'"
    # jwt_verify / jwt_*_query / http_auth_bearer exist since 2.5.
    ((BASH_REMATCH[1] > 2 || (BASH_REMATCH[1] == 2 && BASH_REMATCH[2] >= 5))) \
        || die "HAProxy $HAPROXY_VERSION has no jwt_verify (needs 2.5 or later); set SKIP_JWT=1"
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
if ((NEED_TLS)); then
    for f in --cacert --cert --key --connect-to; do
        grep -q -- "$f" <<<"$OHA_HELP" \
            || die "installed oha ($OHA_VERSION) lacks $f (needed for the mTLS and JWT rows); upgrade oha or set SKIP_MTLS=1 SKIP_JWT=1"
    done
fi
if [[ "$SKIP_JWT" != 1 ]]; then
    grep -qE -- '(^|[ ,])-H[ ,]' <<<"$OHA_HELP" \
        || die "installed oha ($OHA_VERSION) lacks -H (needed for the JWT rows); upgrade oha or set SKIP_JWT=1"
fi
OHA_EXTRA=()
# Let in-flight requests finish at the deadline instead of counting them as errors.
if grep -q -- '--wait-ongoing-requests-after-deadline' <<<"$OHA_HELP"; then
    OHA_EXTRA+=(--wait-ongoing-requests-after-deadline)
fi

# --------------------------------------------------------- portcullis bin ----
NEED_BIN=1
# The mTLS and JWT rows need the binary for `dev-certs` (and `dev-jwks`, `dev-token`) even
# when Portcullis itself is skipped.
if [[ "$SKIP_PORTCULLIS" == 1 && -n "$BACKEND_CMD" && "$NEED_TLS" == 0 ]]; then NEED_BIN=0; fi
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
    if ((NEED_TLS)); then
        help="$("$BIN" dev-certs --help 2>&1 || true)"
        grep -q 'Usage:.*dev-certs' <<<"$help" \
            || die "$BIN does not support 'dev-certs DIR' (needed for the mTLS and JWT rows); set SKIP_MTLS=1 SKIP_JWT=1"
    fi
    if [[ "$SKIP_JWT" != 1 ]]; then
        for sub in dev-jwks dev-token; do
            help="$("$BIN" "$sub" --help 2>&1 || true)"
            grep -q "Usage:.*$sub" <<<"$help" \
                || die "$BIN does not support '$sub' (needed for the JWT rows); set SKIP_JWT=1"
        done
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
if ((NEED_TLS)); then
    # Dev CA + server cert (localhost, 127.0.0.1, ::1) + client cert signed by that CA,
    # plus a "rogue" client cert from another CA (used for a negative sanity check), plus
    # (since issue 4) jwt-es256-key.pem, the P-256 key the ES256 bench tokens are signed with.
    "$BIN" dev-certs "$CERTS" >"$TMP/dev-certs.log" 2>&1 \
        || { cat "$TMP/dev-certs.log" >&2; die "'$BIN dev-certs $CERTS' failed"; }
    for f in ca.pem server.pem server-key.pem client.pem client-key.pem rogue-client.pem rogue-client-key.pem; do
        [[ -s "$CERTS/$f" ]] || die "dev-certs did not write $CERTS/$f"
    done
fi
if [[ "$SKIP_MTLS" != 1 ]]; then
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

NGINX_EQ_SERVER=""
if [[ "$NGINX_SAME_HEADERS" == 1 ]]; then
    # $request_id: 32 random hex digits per request, nginx's own request id (the size of a
    # W3C trace id, so it also stands in for the trace id of a started traceparent).
    NGINX_EQ_SERVER="
    # Plain proxying with the header work Portcullis does on the benchmark route.
    server {
        listen $HOST:$NGINX_EQ_PORT;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header X-Request-Id \$request_id;
            proxy_set_header traceparent \"00-\$request_id-0000000000000001-01\";
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            add_header X-Request-Id \$request_id always;
            add_header X-Content-Type-Options nosniff always;
            add_header Cache-Control no-store always;
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

# `auth: public`: the plain and mTLS rows measure proxying, not authentication (the mTLS
# listener still refuses any connection without a client certificate from the dev CA).
cat >"$TMP/routes/routes.yaml" <<'EOF'
routes:
  - name: get-account
    methods: [GET]
    path: /v1/accounts/{account_id}
    cluster: accounts
    auth: public
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
    }$NGINX_EQ_SERVER$NGINX_TLS_SERVER
}
EOF

# ------------------------------------------------------------ JWT setup ----
# Keys, JWKS and the configs of the JWT rows, written (and checked by haproxy -c / portcullis
# validate) before anything is measured so a problem surfaces in seconds, not minutes.
JWT_DIR="$TMP/jwt"
HAPROXY_DIR="$TMP/haproxy"
if [[ "$SKIP_JWT" != 1 ]]; then
    mkdir -p "$JWT_DIR" "$HAPROXY_DIR" "$TMP/routes-jwt"
    # RS256: a 2048-bit RSA key (PKCS#8) and its public key PEM for HAProxy's jwt_verify.
    # other-*.pem: keys the JWKS does not hold, for "bad signature" tokens that carry the
    # right kid and algorithm (a well-formed signature by the wrong key).
    for k in bench-rs256 other-rs256; do
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$JWT_DIR/$k.pem" 2>>"$JWT_DIR/openssl.log" \
            || { cat "$JWT_DIR/openssl.log" >&2; die "openssl genpkey (RSA 2048) failed"; }
    done
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$JWT_DIR/other-es256.pem" 2>>"$JWT_DIR/openssl.log" \
        || { cat "$JWT_DIR/openssl.log" >&2; die "openssl genpkey (EC P-256) failed"; }
    openssl pkey -in "$JWT_DIR/bench-rs256.pem" -pubout -out "$JWT_DIR/bench-rs256.pub.pem" 2>>"$JWT_DIR/openssl.log" \
        || { cat "$JWT_DIR/openssl.log" >&2; die "openssl pkey -pubout failed"; }
    # ES256: the P-256 key `portcullis dev-certs` writes.
    ES_KEY="$CERTS/jwt-es256-key.pem"
    [[ -s "$ES_KEY" ]] || die "dev-certs did not write $ES_KEY (needed for the ES256 row); set SKIP_JWT=1 for an older binary"
    "$BIN" dev-jwks "$JWT_DIR/bench-rs256.pem:bench-rs256" "$ES_KEY:bench-es256" >"$JWT_DIR/jwks.json" 2>"$JWT_DIR/dev-jwks.err" \
        || { cat "$JWT_DIR/dev-jwks.err" >&2; die "'$BIN dev-jwks' failed"; }
    python3 - "$JWT_DIR/jwks.json" <<'PY' || die "dev-jwks printed an unexpected JWKS ($JWT_DIR/jwks.json)"
import json, sys
keys = {k.get("kid"): k for k in json.load(open(sys.argv[1]))["keys"]}
assert keys["bench-rs256"]["kty"] == "RSA", "bench-rs256 is not an RSA key"
assert keys["bench-es256"]["kty"] == "EC", "bench-es256 is not an EC key"
assert not any("d" in k for k in keys.values()), "the JWKS holds private key material"
PY

    # HAProxy: TLS with a required client certificate from the dev CA (same files as the nginx
    # mTLS block), then the bearer token: present, alg RS256, signature (jwt_verify against the
    # public key), iss, aud (a string claim) and exp against the current time. Every refusal is
    # a 401, like Portcullis. Keep-alive to the backend with an idle connection pool shared by
    # all client connections (http-reuse always), as nginx's upstream keepalive.
    cat "$CERTS/server.pem" "$CERTS/server-key.pem" >"$HAPROXY_DIR/server.pem"
    if [[ "$PIN" == 1 ]]; then HAPROXY_THREADS="nbthread 1"; else HAPROXY_THREADS=""; fi
    cat >"$HAPROXY_DIR/haproxy.cfg" <<EOF
# Generated by bench/run.sh: mTLS termination + RS256 JWT check in front of the backend.
global
    maxconn 8192
    ssl-default-bind-options ssl-min-ver TLSv1.2
    $HAPROXY_THREADS

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 75s
    timeout server 30s
    timeout http-keep-alive 75s

frontend jwt_mtls
    bind $HOST:$HAPROXY_PORT ssl crt $HAPROXY_DIR/server.pem ca-file $CERTS/ca.pem verify required
    http-request set-var(txn.bearer) http_auth_bearer
    http-request deny deny_status 401 unless { var(txn.bearer) -m found }
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
    http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('\$.iss')
    http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('\$.aud')
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
    http-request set-var(txn.now) date()
    http-request deny deny_status 401 unless { var(txn.alg) -m str RS256 }
    http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$JWT_DIR/bench-rs256.pub.pem") -m int 1 }
    http-request deny deny_status 401 unless { var(txn.iss) -m str $JWT_ISS }
    http-request deny deny_status 401 unless { var(txn.aud) -m str $JWT_AUD }
    http-request deny deny_status 401 unless { var(txn.exp),sub(txn.now) -m int gt 0 }
    default_backend backend

backend backend
    http-reuse always
    server backend $HOST:$BACKEND_PORT
EOF
    haproxy -c -f "$HAPROXY_DIR/haproxy.cfg" >"$HAPROXY_DIR/check.log" 2>&1 \
        || { cat "$HAPROXY_DIR/check.log" >&2; die "haproxy rejected the generated config ($HAPROXY_DIR/haproxy.cfg)"; }

    # Portcullis: its own process (so the plain and mTLS rows are unchanged by this section),
    # one TLS listener with a required client certificate, one issuer whose keys come from the
    # JWKS file, the same route with `auth: jwt`. The authz-on process (below) has the same
    # gateway file apart from its ports and policies folder.
    jwt_gateway_yaml() { # port admin_port policies_dir
        cat <<EOF
listeners:
  - name: mtls-jwt
    address: $HOST:$1
    tls:
      certificates:
        - cert: certs/server.pem
          key: certs/server-key.pem
      client_auth: required
      client_ca: [certs/ca.pem]
admin:
  address: $HOST:$2
clusters:
  accounts:
    endpoints: ["$HOST:$BACKEND_PORT"]
policies: $3
issuers:
  bench-idp:
    issuer: $JWT_ISS
    audiences: [$JWT_AUD]
    jwks:
      file: jwt/jwks.json
    algorithms: [RS256, ES256]
log:
  level: warn
  access: false
$PC_WORKERS
EOF
    }
    jwt_gateway_yaml "$PORTCULLIS_JWT_PORT" "$JWT_ADMIN_PORT" routes-jwt >"$TMP/gateway-jwt.yaml"
    cat >"$TMP/routes-jwt/routes.yaml" <<'EOF'
routes:
  - name: get-account
    methods: [GET]
    path: /v1/accounts/{account_id}
    cluster: accounts
    auth: jwt
    authz: { authenticated: true }
EOF
    if [[ "$SKIP_PORTCULLIS" != 1 ]] && "$BIN" validate --help >/dev/null 2>&1; then
        (cd "$TMP" && "$BIN" validate --config "$TMP/gateway-jwt.yaml") >"$TMP/validate-jwt.log" 2>&1 \
            || { cat "$TMP/validate-jwt.log" >&2; die "portcullis rejects the generated gateway-jwt.yaml ($TMP/gateway-jwt.yaml); set SKIP_JWT=1 for a binary without JWT support"; }
    fi
    if ((AUTHZ_ROWS)); then
        # Authorization on: the same route and request with 3 scopes and 2 claim-based ownership
        # rules (both on the path's account id: listed in `accounts`, and matching the pattern
        # built from `account_prefix`), all of which the authz token satisfies.
        mkdir -p "$TMP/routes-authz"
        jwt_gateway_yaml "$PORTCULLIS_AUTHZ_PORT" "$AUTHZ_ADMIN_PORT" routes-authz >"$TMP/gateway-authz.yaml"
        cat >"$TMP/routes-authz/routes.yaml" <<'EOF'
routes:
  - name: get-account
    methods: [GET]
    path: /v1/accounts/{account_id}
    cluster: accounts
    auth: jwt
    authz:
      scopes: { all_of: [a, b, c] }
      ownership:
        all_of:
          - path: account_id
            claim_contains: accounts
          - path: account_id
            template: "{account_prefix}*"
EOF
        if "$BIN" validate --help >/dev/null 2>&1; then
            (cd "$TMP" && "$BIN" validate --config "$TMP/gateway-authz.yaml") >"$TMP/validate-authz.log" 2>&1 \
                || { cat "$TMP/validate-authz.log" >&2; die "portcullis rejects the generated gateway-authz.yaml ($TMP/gateway-authz.yaml); set SKIP_AUTHZ=1 for a binary without authorization rules"; }
        fi
    fi
fi

# ------------------------------------------------------------------ load ----
# Run oha once in the background and wait for it, so that a signal to this
# script interrupts the wait and the EXIT trap stops oha (its own process group,
# created by timeout) along with the services.
# OHA_TLS (set by measure) adds the TLS options for the mTLS and JWT rows, OHA_HDR the
# Authorization header of the JWT rows.
OHA_TLS=()
OHA_HDR=()
oha_once() { # seconds connections url out err
    local secs="$1" conns="$2" url="$3" out="$4" err="$5" pid rc=0
    timeout --kill-after=5 $((secs + 30)) \
        "${PIN_LOAD[@]+"${PIN_LOAD[@]}"}" env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY -u all_proxy \
        oha --no-tui -z "${secs}s" -c "$conns" "${OHA_JSON[@]}" "${OHA_EXTRA[@]+"${OHA_EXTRA[@]}"}" \
        "${OHA_TLS[@]+"${OHA_TLS[@]}"}" "${OHA_HDR[@]+"${OHA_HDR[@]}"}" "$url" \
        >"$out" 2>"$err" </dev/null &
    pid=$!
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    forget_pid "$pid"
    return "$rc"
}

# measure NAME PORT [plain|tls|jwt TOKEN]: warm-up, measured run, parse into
# RPS/P50/P99/NOTE[NAME]. With "tls": https://localhost:PORT with the dev client certificate,
# TLS_CONNECTIONS connections, and localhost pinned to 127.0.0.1 (--connect-to) so it never
# depends on how localhost resolves. "jwt": the same plus `Authorization: Bearer TOKEN`.
declare -A RPS P50 P99 NOTE
measure() {
    local name="$1" port="$2" mode="${3:-plain}" url out conns
    OHA_HDR=()
    if [[ "$mode" == jwt ]]; then OHA_HDR=(-H "Authorization: Bearer $4"); fi
    if [[ "$mode" == tls || "$mode" == jwt ]]; then
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
# nginx, …; the order within a round rotates from round to round); the table shows each one's
# median round, so a noisy moment on the box cannot favour one of them.
NGINX_ARGS=(-c "$TMP/nginx/nginx.conf" -p "$TMP/nginx/")
NGINX_HELP="$(nginx -h 2>&1 || true)"
if grep -q -- '-e filename' <<<"$NGINX_HELP"; then NGINX_ARGS+=(-e "$TMP/nginx/error.log"); fi
nginx -t -q "${NGINX_ARGS[@]}" >"$TMP/nginx/test.log" 2>&1 \
    || { cat "$TMP/nginx/test.log" >&2; die "nginx rejected the generated config ($TMP/nginx/nginx.conf)"; }
start_service nginx "$TMP/nginx/stdout.log" "${PIN_PROXY[@]+"${PIN_PROXY[@]}"}" nginx "${NGINX_ARGS[@]}"
NGINX_PID=$LAST_PID
wait_http nginx "$NGINX_PID" "http://$HOST:$NGINX_PORT$BENCH_PATH" "" "$TMP/nginx/error.log"
require_200 nginx "http://$HOST:$NGINX_PORT$BENCH_PATH"
if [[ "$NGINX_SAME_HEADERS" == 1 ]]; then
    require_200 nginx-same-headers "http://$HOST:$NGINX_EQ_PORT$BENCH_PATH"
    NGINX_EQ_CHECK="$(lcurl -si "http://$HOST:$NGINX_EQ_PORT$BENCH_PATH" 2>/dev/null | tr -d '\r' | grep -ciE '^(x-request-id|x-content-type-options|cache-control):' || true)"
    [[ "$NGINX_EQ_CHECK" == 3 ]] || die "nginx-same-headers: the response lacks X-Request-Id, X-Content-Type-Options or Cache-Control"
fi
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

# measure_rotated ROUND NAME:PORT[:MODE] ...: measures every target once, starting with a
# different one each round (round 1 in the given order, round 2 from the second, ...), so no
# target always runs first or last in a round.
measure_rotated() {
    local r="$1" n i t name port mode
    shift
    n=$#
    local targets=("$@")
    for ((i = 0; i < n; i++)); do
        t="${targets[$(((i + r - 1) % n))]}"
        IFS=: read -r name port mode <<<"$t"
        if [[ -n "$mode" ]]; then measure "$name-$r" "$port" "$mode"; else measure "$name-$r" "$port"; fi
    done
}

PLAIN_TARGETS=("nginx:$NGINX_PORT")
if [[ "$NGINX_SAME_HEADERS" == 1 ]]; then PLAIN_TARGETS+=("nginx-eq:$NGINX_EQ_PORT"); fi
if [[ "$SKIP_PORTCULLIS" != 1 ]]; then PLAIN_TARGETS+=("portcullis:$PORTCULLIS_PORT"); fi
ROUND_LINES=()
for ((r = 1; r <= ROUNDS; r++)); do
    measure_rotated "$r" "${PLAIN_TARGETS[@]}"
    line="| $r | ${RPS[nginx-$r]}"
    if [[ "$NGINX_SAME_HEADERS" == 1 ]]; then
        line+=" | ${RPS[nginx-eq-$r]}"
    fi
    if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
        line+=" | ${RPS[portcullis-$r]} | $(python3 -c 'import sys; print("%.2f" % (float(sys.argv[1]) / float(sys.argv[2])))' "${RPS[portcullis-$r]}" "${RPS[nginx-$r]}") |"
    else
        line+=" | skipped | |"
    fi
    ROUND_LINES+=("$line")
done

# mTLS: same backend, same alternation, after the plain rounds.
MTLS_ROUND_LINES=()
if [[ "$SKIP_MTLS" != 1 ]]; then
    MTLS_TARGETS=("nginx-mtls:$NGINX_TLS_PORT:tls")
    if [[ "$SKIP_PORTCULLIS" != 1 ]]; then MTLS_TARGETS+=("portcullis-mtls:$PORTCULLIS_TLS_PORT:tls"); fi
    for ((r = 1; r <= ROUNDS; r++)); do
        measure_rotated "$r" "${MTLS_TARGETS[@]}"
        line="| $r | ${RPS[nginx-mtls-$r]}"
        if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
            line+=" | ${RPS[portcullis-mtls-$r]} | $(python3 -c 'import sys; print("%.2f" % (float(sys.argv[1]) / float(sys.argv[2])))' "${RPS[portcullis-mtls-$r]}" "${RPS[nginx-mtls-$r]}") |"
        else
            line+=" | skipped | |"
        fi
        MTLS_ROUND_LINES+=("$line")
    done
fi
stop_service "$NGINX_PID"
if [[ "$SKIP_PORTCULLIS" != 1 ]]; then stop_service "$PC_PID"; fi

# JWT: HAProxy and a second Portcullis (mTLS + bearer token), same backend, started only now
# and measured in their own alternating rounds: HAProxy RS256, Portcullis RS256, Portcullis
# ES256, then (unless SKIP_AUTHZ=1) Portcullis ES256 with the authz token on the authz-off route
# (the same process) and on the authz-on route (a third process, started alongside). Every
# round mints fresh tokens (1 h lifetime), so a long run never outlives them.
JWT_ROUND_LINES=()
AUTHZ_ROUND_LINES=()
JWT_CACHE=""
JWKS_STATE=""
if [[ "$SKIP_JWT" != 1 ]]; then
    start_service haproxy "$HAPROXY_DIR/haproxy.log" "${PIN_PROXY[@]+"${PIN_PROXY[@]}"}" haproxy -db -f "$HAPROXY_DIR/haproxy.cfg"
    HAPROXY_PID=$LAST_PID
    if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
        # shellcheck disable=SC2016  # $1/$2 are expanded by the inner bash
        start_service portcullis-jwt "$TMP/portcullis-jwt.log" \
            "${PIN_PROXY[@]+"${PIN_PROXY[@]}"}" bash -c 'cd "$1" && exec "$2" run --config "$1/gateway-jwt.yaml"' _ "$TMP" "$BIN"
        PC_JWT_PID=$LAST_PID
        wait_http portcullis-jwt "$PC_JWT_PID" "http://$HOST:$JWT_ADMIN_PORT/readyz" 200 "$TMP/portcullis-jwt.log"
        JWKS_STATE="$(lcurl "http://$HOST:$JWT_ADMIN_PORT/readyz" 2>/dev/null | python3 -c '
import json, sys
print((json.load(sys.stdin).get("jwks") or {}).get("bench-idp", "not reported"))' 2>/dev/null || echo 'not reported')"
    fi
    if ((AUTHZ_ROWS)); then
        # shellcheck disable=SC2016  # $1/$2 are expanded by the inner bash
        start_service portcullis-authz "$TMP/portcullis-authz.log" \
            "${PIN_PROXY[@]+"${PIN_PROXY[@]}"}" bash -c 'cd "$1" && exec "$2" run --config "$1/gateway-authz.yaml"' _ "$TMP" "$BIN"
        PC_AUTHZ_PID=$LAST_PID
        wait_http portcullis-authz "$PC_AUTHZ_PID" "http://$HOST:$AUTHZ_ADMIN_PORT/readyz" 200 "$TMP/portcullis-authz.log"
    fi
    mint_check_tokens
    check_jwt haproxy-jwt "$HAPROXY_PORT" "$HAPROXY_PID" "$HAPROXY_DIR/haproxy.log" haproxy
    if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
        check_jwt portcullis-jwt "$PORTCULLIS_JWT_PORT" "$PC_JWT_PID" "$TMP/portcullis-jwt.log" portcullis
    fi
    if ((AUTHZ_ROWS)); then
        mint_authz TOK_AUTHZ
        check_authz "$PC_AUTHZ_PID" "$TMP/portcullis-authz.log"
    fi
    if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
        read -r cache_hit0 cache_miss0 <<<"$(jwt_cache_counts)"
    fi
    for ((r = 1; r <= ROUNDS; r++)); do
        mint_or_die TOK_RS "$JWT_DIR/bench-rs256.pem" bench-rs256 RS256
        mint_or_die TOK_ES "$ES_KEY" bench-es256 ES256
        measure "haproxy-jwt-$r" "$HAPROXY_PORT" jwt "$TOK_RS"
        line="| $r | ${RPS[haproxy-jwt-$r]}"
        if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
            measure "portcullis-jwt-rs256-$r" "$PORTCULLIS_JWT_PORT" jwt "$TOK_RS"
            measure "portcullis-jwt-es256-$r" "$PORTCULLIS_JWT_PORT" jwt "$TOK_ES"
            line+=" | ${RPS[portcullis-jwt-rs256-$r]} | ${RPS[portcullis-jwt-es256-$r]}"
            line+=" | $(ratio "${RPS[portcullis-jwt-rs256-$r]}" "${RPS[haproxy-jwt-$r]}") | $(ratio "${RPS[portcullis-jwt-es256-$r]}" "${RPS[haproxy-jwt-$r]}") |"
        else
            line+=" | skipped | skipped | | |"
        fi
        JWT_ROUND_LINES+=("$line")
        if ((AUTHZ_ROWS)); then
            mint_authz TOK_AUTHZ
            measure "portcullis-authz-off-$r" "$PORTCULLIS_JWT_PORT" jwt "$TOK_AUTHZ"
            measure "portcullis-authz-on-$r" "$PORTCULLIS_AUTHZ_PORT" jwt "$TOK_AUTHZ"
            AUTHZ_ROUND_LINES+=("| $r | ${RPS[portcullis-authz-off-$r]} | ${RPS[portcullis-authz-on-$r]} | $(ratio "${RPS[portcullis-authz-on-$r]}" "${RPS[portcullis-authz-off-$r]}") |")
        fi
    done
    if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
        read -r cache_hit1 cache_miss1 <<<"$(jwt_cache_counts)"
        if [[ "$cache_hit0$cache_miss0$cache_hit1$cache_miss1" =~ ^[0-9]+$ ]]; then
            JWT_CACHE="$((cache_hit1 - cache_hit0)) hits, $((cache_miss1 - cache_miss0)) misses"
        else
            JWT_CACHE="not reported by /metrics (portcullis_jwt_cache_total)"
        fi
        stop_service "$PC_JWT_PID"
    fi
    if ((AUTHZ_ROWS)); then stop_service "$PC_AUTHZ_PID"; fi
    stop_service "$HAPROXY_PID"
fi

# median NAME: the round whose req/s is the median becomes RPS/P50/P99/NOTE[NAME].
median() {
    local name="$1" best
    best="$(for ((r = 1; r <= ROUNDS; r++)); do echo "${RPS[$name-$r]} $r"; done | sort -n | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2) { print $2 }')"
    RPS[$name]="${RPS[$name-$best]}"; P50[$name]="${P50[$name-$best]}"; P99[$name]="${P99[$name-$best]}"
    NOTE[$name]="${NOTE[$name-$best]}"
}
median nginx
if [[ "$NGINX_SAME_HEADERS" == 1 ]]; then median nginx-eq; fi
if [[ "$SKIP_PORTCULLIS" != 1 ]]; then median portcullis; fi
if [[ "$SKIP_MTLS" != 1 ]]; then
    median nginx-mtls
    if [[ "$SKIP_PORTCULLIS" != 1 ]]; then median portcullis-mtls; fi
fi
if [[ "$SKIP_JWT" != 1 ]]; then
    median haproxy-jwt
    if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
        median portcullis-jwt-rs256
        median portcullis-jwt-es256
    fi
    if ((AUTHZ_ROWS)); then
        median portcullis-authz-off
        median portcullis-authz-on
    fi
fi

stop_service "$BACKEND_PID"

# ---------------------------------------------------------------- report ----
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
    if [[ "$NGINX_SAME_HEADERS" == 1 ]]; then
        echo '- nginx + Portcullis'"'"'s headers: a second server block of the same nginx that also sets `X-Request-Id` (`$request_id`), `traceparent`, `X-Forwarded-For/-Proto/-Host` upstream and `X-Request-Id`, `X-Content-Type-Options: nosniff`, `Cache-Control: no-store` on the response, as Portcullis does on this route (context only: the acceptance ratio is against bare nginx)'
    fi
    echo "- backend: $BACKEND_DESC"
    if [[ "$SKIP_PORTCULLIS" != 1 ]]; then echo "- portcullis: \`$BIN\` ($PC_VERSION)"; fi
    echo
    echo "Median of $ROUNDS alternating rounds for the proxies, the order rotating each round (one run for the backend):"
    echo
    echo "| target | req/s | p50 ms | p99 ms | req/s ratio vs nginx |"
    echo "|---|---:|---:|---:|---:|"
    row "$BACKEND_LABEL direct" backend
    row "nginx → backend" nginx
    if [[ "$NGINX_SAME_HEADERS" == 1 ]]; then row "nginx + Portcullis's headers → backend" nginx-eq; fi
    if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
        row "portcullis → backend" portcullis
    else
        echo "| portcullis → backend | skipped | | | |"
    fi
    echo
    for n in backend nginx nginx-eq portcullis; do
        if [[ -n "${NOTE[$n]:-}" && "${NOTE[$n]}" != "-" ]]; then echo "- warning, $n: ${NOTE[$n]}"; fi
    done
    echo "Rounds (req/s):"
    echo
    if [[ "$NGINX_SAME_HEADERS" == 1 ]]; then
        echo "| round | nginx | nginx + headers | portcullis | ratio vs nginx |"
        echo "|---:|---:|---:|---:|---:|"
    else
        echo "| round | nginx | portcullis | ratio |"
        echo "|---:|---:|---:|---:|"
    fi
    printf '%s\n' "${ROUND_LINES[@]}"
    echo
    if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
        echo "Portcullis/nginx req/s ratio (medians): $(ratio "${RPS[portcullis]}" "${RPS[nginx]}")"
        echo
        echo "Portcullis/nginx per-round ratios: $(round_stats nginx portcullis)"
        if [[ "$NGINX_SAME_HEADERS" == 1 ]]; then
            echo
            echo "Portcullis/(nginx + Portcullis's headers) req/s ratio (medians): $(ratio "${RPS[portcullis]}" "${RPS[nginx-eq]}")"
        fi
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
            echo
            echo "Portcullis/nginx mTLS per-round ratios: $(round_stats nginx-mtls portcullis-mtls)"
        else
            echo "Portcullis/nginx mTLS req/s ratio: n/a (SKIP_PORTCULLIS=1)"
        fi
    fi
    echo
    echo "## JWT (mTLS + bearer token)"
    echo
    if [[ "$SKIP_JWT" == 1 ]]; then
        echo "Skipped (SKIP_JWT=1)."
    else
        echo "- load: \`oha --no-tui -z ${DURATION_S}s -c $TLS_CONNECTIONS ${OHA_JSON[*]}${OHA_EXTRA[*]:+ ${OHA_EXTRA[*]}} --cacert ca.pem --cert client.pem --key client-key.pem --connect-to $TLS_NAME:PORT:$HOST:PORT -H \"Authorization: Bearer \$TOKEN\"\`, ${WARMUP_S}s warm-up per target, HTTP/1.1 keep-alive"
        echo "- request: GET https://$TLS_NAME:PORT$BENCH_PATH, same dev certificates as the mTLS rows"
        echo "- tokens: \`portcullis dev-token --alg RS256|ES256 --iss $JWT_ISS --aud $JWT_AUD --sub bench --ttl 1h\`; RS256: RSA 2048 (\`openssl genpkey\`), ES256: P-256 (\`jwt-es256-key.pem\` from \`portcullis dev-certs\`); fresh tokens every round, one token repeated on every request of a row"
        echo "- haproxy: HAProxy $HAPROXY_VERSION, ${HAPROXY_THREADS:-default nbthread (one thread per CPU)}, \`bind ssl ... ca-file ca.pem verify required\`, \`http-request deny deny_status 401\` unless: bearer token present, \`jwt_header_query('\$.alg')\` = RS256, \`jwt_verify(txn.alg, pubkey.pem)\` = 1, \`iss\` = $JWT_ISS, \`aud\` = $JWT_AUD (string), \`exp\` > \`date()\`; \`http-reuse always\` to the backend"
        if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
            echo "- portcullis: a second process, listener with \`client_auth: required\`, route \`auth: jwt\`, issuer \`bench-idp\` (jwks \`file:\`, algorithms [RS256, ES256], defaults otherwise); JWKS state at start: $JWKS_STATE"
            echo "- portcullis verified-token cache over the JWT rounds (warm-ups included$( ((AUTHZ_ROWS)) && echo ', and the authz-off row')): $JWT_CACHE. Portcullis checks a token's signature once and serves its repeats from this cache (keyed by the token, claims re-checked); HAProxy runs jwt_verify on every request. \`cargo bench --bench jwt\` gives the per-verification cost of a hit and of a miss"
        fi
        for n in haproxy-jwt portcullis-jwt; do
            if [[ -n "${JWT_CHECK[$n]:-}" ]]; then
                echo "- sanity check, $n: ${JWT_CHECK[$n]}; curl negotiated ${TLS_SESSION[$n]:-(unknown)}"
            fi
            if [[ -n "${JWT_DEVIATION[$n]:-}" ]]; then
                echo "- **deviation**, $n: ${JWT_DEVIATION[$n]}"
            fi
        done
        echo
        echo "Median of $ROUNDS alternating rounds:"
        echo
        echo "| target | req/s | p50 ms | p99 ms | req/s ratio vs HAProxy |"
        echo "|---|---:|---:|---:|---:|"
        row "haproxy mTLS + JWT RS256 → backend" haproxy-jwt haproxy-jwt
        if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
            row "portcullis mTLS + JWT RS256 → backend" portcullis-jwt-rs256 haproxy-jwt
            row "portcullis mTLS + JWT ES256 → backend" portcullis-jwt-es256 haproxy-jwt
        else
            echo "| portcullis mTLS + JWT RS256 → backend | skipped | | | |"
            echo "| portcullis mTLS + JWT ES256 → backend | skipped | | | |"
        fi
        echo
        for n in haproxy-jwt portcullis-jwt-rs256 portcullis-jwt-es256; do
            if [[ -n "${NOTE[$n]:-}" && "${NOTE[$n]}" != "-" ]]; then echo "- warning, $n: ${NOTE[$n]}"; fi
        done
        echo "Rounds (req/s):"
        echo
        echo "| round | haproxy RS256 | portcullis RS256 | portcullis ES256 | ratio RS256 | ratio ES256 |"
        echo "|---:|---:|---:|---:|---:|---:|"
        printf '%s\n' "${JWT_ROUND_LINES[@]}"
        echo
        if [[ "$SKIP_PORTCULLIS" != 1 ]]; then
            echo "Portcullis/HAProxy JWT req/s ratio (medians): RS256 $(ratio "${RPS[portcullis-jwt-rs256]}" "${RPS[haproxy-jwt]}"), ES256 $(ratio "${RPS[portcullis-jwt-es256]}" "${RPS[haproxy-jwt]}")"
        else
            echo "Portcullis/HAProxy JWT req/s ratio: n/a (SKIP_PORTCULLIS=1)"
        fi
        echo
        echo "### Authorization: off vs on"
        echo
        if [[ "$SKIP_AUTHZ" == 1 ]]; then
            echo "Skipped (SKIP_AUTHZ=1)."
        elif [[ "$SKIP_PORTCULLIS" == 1 ]]; then
            echo "Skipped (SKIP_PORTCULLIS=1)."
        else
            echo "- load and request: as the ES256 row above (same oha command, GET https://$TLS_NAME:PORT$BENCH_PATH, dev client certificate), measured in the same rounds right after it"
            echo "- token (both rows, fresh every round): \`portcullis dev-token --alg ES256 --iss $JWT_ISS --aud $JWT_AUD --sub bench --ttl 1h --scope \"a b c\" --tenant bench --claim 'accounts=[\"$AUTHZ_ACCOUNT\"]' --claim 'account_prefix=\"$AUTHZ_PREFIX\"'\`"
            echo "- authz off: the JWT process above, route with \`authz: { authenticated: true }\`"
            echo "- authz on: a third process, same gateway file apart from its ports, route with \`authz: { scopes: { all_of: [a, b, c] }, ownership: { all_of: [ { path: account_id, claim_contains: accounts }, { path: account_id, template: \"{account_prefix}*\" } ] } }\`"
            echo "- sanity check: $AUTHZ_CHECK; curl negotiated ${TLS_SESSION[portcullis-authz]:-(unknown)}"
            echo
            echo "Median of $ROUNDS alternating rounds:"
            echo
            echo "| target | req/s | p50 ms | p99 ms | req/s ratio vs authz off |"
            echo "|---|---:|---:|---:|---:|"
            row "portcullis mTLS + JWT ES256, authz off → backend" portcullis-authz-off portcullis-authz-off
            row "portcullis mTLS + JWT ES256, authz on (3 scopes, 2 ownership rules) → backend" portcullis-authz-on portcullis-authz-off
            echo
            for n in portcullis-authz-off portcullis-authz-on; do
                if [[ -n "${NOTE[$n]:-}" && "${NOTE[$n]}" != "-" ]]; then echo "- warning, $n: ${NOTE[$n]}"; fi
            done
            echo "Rounds (req/s):"
            echo
            echo "| round | authz off | authz on | ratio |"
            echo "|---:|---:|---:|---:|"
            printf '%s\n' "${AUTHZ_ROUND_LINES[@]}"
            echo
            echo "Portcullis authz on/off req/s ratio (medians): $(ratio "${RPS[portcullis-authz-on]}" "${RPS[portcullis-authz-off]}")"
            echo
            echo "\`cargo bench --bench authz\` gives the CPU cost of one such decision."
        fi
    fi
)"

mkdir -p "$RESULTS_DIR"
printf '%s\n' "$REPORT" >"$RESULTS_DIR/latest.md"
printf '%s\n' "$REPORT"
log "written to $RESULTS_DIR/latest.md"
