#!/usr/bin/env bash
# Rate limits, side by side in one run on this box: three Portcullis processes in front of the
# same constant-body backend, each checking the same ES256 token (plain HTTP, so the rows differ
# only in the rate-limit stage):
#   off    — no tiers;
#   local  — one tier, governor GCRA in process (rate high enough that nothing is refused);
#   redis  — the same tier in a real redis-server (one EVALSHA round-trip per request).
# oha drives each for DURATION with CONNECTIONS connections; rounds alternate between the rows
# and the medians are reported (req/s, p50, p99), with the p99 the Redis round-trip adds.
#
# Usage: bench/ratelimit.sh            (knobs: DURATION=5s ROUNDS=3 CONNECTIONS=64)
# Needs: target/release/portcullis (cargo build --release), oha, redis-server, python3.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
BIN="${BIN:-$REPO_ROOT/target/release/portcullis}"
DURATION="${DURATION:-5s}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-64}"
BACKEND_PORT="${BACKEND_PORT:-18181}"
REDIS_PORT="${REDIS_PORT:-18179}"
ROWS=(off local redis)
declare -A PORT=([off]=18183 [local]=18184 [redis]=18185)
declare -A ADMIN=([off]=19983 [local]=19984 [redis]=19985)

log() { printf '[ratelimit-bench] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ -x "$BIN" ]] || die "$BIN not found; run cargo build --release"
command -v oha >/dev/null || die "oha not found (cargo install oha --locked)"
command -v redis-server >/dev/null || die "redis-server not found (apt-get install redis-server)"

TMP="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

wait_ok() { # url
    for _ in $(seq 1 300); do
        if curl --noproxy '*' -s -o /dev/null --max-time 1 "$1"; then return 0; fi
        sleep 0.1
    done
    die "$1 did not answer"
}

"$BIN" dev-certs "$TMP/certs" >/dev/null 2>&1 || die "dev-certs failed"
[[ -f "$TMP/certs/jwt-es256-key.pem" && -f "$TMP/certs/jwks.json" ]] || die "dev-certs wrote no JWT key"
TOKEN="$("$BIN" dev-token --key "$TMP/certs/jwt-es256-key.pem" --kid jwt-es256 --alg ES256 \
    --iss https://idp.bench --aud bench --sub bench --tenant acme --ttl 1h)"

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
PIDS+=($!)
"$BIN" backend --fixed --listen "127.0.0.1:$BACKEND_PORT" >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done

for row in "${ROWS[@]}"; do
    dir="$TMP/$row"
    mkdir -p "$dir/routes"
    limits=""
    tiers=""
    case "$row" in
        local) tiers=$'rate_limits:\n  default_tier: t\n  tiers:\n    t: { rate: 100000000/s, burst: 100000000 }\n' ;;
        redis)
            limits=$'redis:\n  url: redis://127.0.0.1:'"$REDIS_PORT"$'/0\nrate_limits:\n  store: redis\n  redis_timeout: 100ms\n'
            tiers=$'rate_limits:\n  default_tier: t\n  tiers:\n    t: { rate: 100000000/s, burst: 100000000, on_redis_failure: fail_closed }\n' ;;
    esac
    cat >"$dir/gateway.yaml" <<EOF
listeners:
  - name: public
    address: 127.0.0.1:${PORT[$row]}
admin:
  address: 127.0.0.1:${ADMIN[$row]}
clusters:
  main:
    endpoints: ["127.0.0.1:$BACKEND_PORT"]
policies: routes
log:
  level: warn
  access: false
issuers:
  bench:
    issuer: https://idp.bench
    audiences: [bench]
    jwks:
      file: $TMP/certs/jwks.json
    algorithms: [ES256]
$limits
EOF
    cat >"$dir/routes/r.yaml" <<EOF
$tiers
routes:
  - name: read
    methods: [GET]
    path: /v1/accounts/{id}
    cluster: main
    auth: jwt
    authz:
      authenticated: true
EOF
    "$BIN" run --config "$dir/gateway.yaml" 2>"$dir/log" &
    PIDS+=($!)
done
for row in "${ROWS[@]}"; do
    wait_ok "http://127.0.0.1:${ADMIN[$row]}/readyz"
    code="$(curl --noproxy '*' -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" \
        "http://127.0.0.1:${PORT[$row]}/v1/accounts/acc-100")"
    [[ "$code" == 200 ]] || die "$row: GET answered $code, expected 200 (log: $TMP/$row/log)"
done
[[ "$(redis-cli -p "$REDIS_PORT" dbsize)" == 1 ]] || die "the redis row keeps no bucket in Redis"

declare -A RPS P50 P99
for round in $(seq 1 "$ROUNDS"); do
    for row in "${ROWS[@]}"; do
        out="$TMP/$row-$round.json"
        oha --no-tui -z "$DURATION" -c "$CONNECTIONS" --output-format json \
            -H "Authorization: Bearer $TOKEN" \
            "http://127.0.0.1:${PORT[$row]}/v1/accounts/acc-100" >"$out" 2>/dev/null
        read -r rps p50 p99 ok < <(python3 - "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
s, lp = d["summary"], d.get("latencyPercentiles") or {}
codes = d.get("statusCodeDistribution") or {}
print("%.1f %.3f %.3f %s" % (s["requestsPerSec"], lp["p50"] * 1e3, lp["p99"] * 1e3,
      "yes" if set(codes) == {"200"} else "codes=" + ",".join(sorted(codes))))
PY
)
        [[ "$ok" == yes ]] || die "$row round $round: non-200 answers ($ok)"
        RPS[$row]+="$rps "
        P50[$row]+="$p50 "
        P99[$row]+="$p99 "
        log "round $round $row: $rps req/s, p50 $p50 ms, p99 $p99 ms"
    done
done

# Latency alone: one connection, so the p50/p99 difference is the Redis round-trip itself and
# not queueing behind 64 connections.
declare -A L50 L99
for round in $(seq 1 "$ROUNDS"); do
    for row in "${ROWS[@]}"; do
        out="$TMP/lat-$row-$round.json"
        oha --no-tui -z "$DURATION" -c 1 --output-format json \
            -H "Authorization: Bearer $TOKEN" \
            "http://127.0.0.1:${PORT[$row]}/v1/accounts/acc-100" >"$out" 2>/dev/null
        read -r p50 p99 < <(python3 -c 'import json, sys; lp = json.load(open(sys.argv[1]))["latencyPercentiles"]; print("%.1f %.1f" % (lp["p50"] * 1e6, lp["p99"] * 1e6))' "$out")
        L50[$row]+="$p50 "
        L99[$row]+="$p99 "
        log "round $round $row, 1 connection: p50 $p50 µs, p99 $p99 µs"
    done
done

median() { python3 -c 'import statistics, sys; print("%.3f" % statistics.median(map(float, sys.argv[1:])))' $1; }
echo "| rate limits | req/s (median of $ROUNDS) | p50 ms | p99 ms | req/s vs off | p99 added vs off |"
echo "|---|---:|---:|---:|---:|---:|"
off_rps="$(median "${RPS[off]}")"
off_p99="$(median "${P99[off]}")"
for row in "${ROWS[@]}"; do
    rps="$(median "${RPS[$row]}")"
    p50="$(median "${P50[$row]}")"
    p99="$(median "${P99[$row]}")"
    ratio="$(python3 -c "print('%.2f' % ($rps / $off_rps))")"
    added="$(python3 -c "print('%+.3f ms' % ($p99 - $off_p99))")"
    printf '| %s | %.0f | %s | %s | %s | %s |\n' "$row" "$rps" "$p50" "$p99" "$ratio" "$added"
done
echo
echo "| rate limits, 1 connection | p50 µs | p99 µs | p50 added vs off | p99 added vs off |"
echo "|---|---:|---:|---:|---:|"
off_l50="$(median "${L50[off]}")"
off_l99="$(median "${L99[off]}")"
for row in "${ROWS[@]}"; do
    l50="$(median "${L50[$row]}")"
    l99="$(median "${L99[$row]}")"
    printf '| %s | %.1f | %.1f | %+.1f µs | %+.1f µs |\n' "$row" "$l50" "$l99" \
        "$(python3 -c "print($l50 - $off_l50)")" "$(python3 -c "print($l99 - $off_l99)")"
done
echo
echo "Per round req/s: off ${RPS[off]}; local ${RPS[local]}; redis ${RPS[redis]}"
echo "$(oha --version | head -n1); $(redis-server --version | cut -d' ' -f1-3); $(nproc) CPUs; DURATION=$DURATION CONNECTIONS=$CONNECTIONS"
