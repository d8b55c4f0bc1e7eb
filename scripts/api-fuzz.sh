#!/usr/bin/env bash
# Fuzz a running gate's API against its own OpenAPI document with schemathesis (issue 18):
# no 5xx, every answer as documented (status, content type, headers, body schema),
# schema-valid requests accepted and schema-invalid ones refused.
#
#   api-fuzz.sh [options] BASE_URL [-- ST_RUN_ARGS...]
#
#   BASE_URL          the gate, e.g. http://127.0.0.1:8080; it must serve its document
#                     (DESKGATE_DOCS_ENABLED=true)
#   --operations SET  user (default): every operation but /api/v1/admin/*, with
#                     POST /api/v1/auth/logout fuzzed last, in a pass of its own, as it
#                     revokes the token the run signs in with; admin: /api/v1/admin/*
#   -n EXAMPLES       examples per operation (default $DESKGATE_API_FUZZ_EXAMPLES, else 50)
#   --seed SEED       the seed that makes a run repeatable (default $DESKGATE_API_FUZZ_SEED,
#                     else 18); printed, so that a failing run can be replayed
#   -H 'NAME: VALUE'  a header on every request (repeatable), e.g. an Origin
#   --report-dir DIR  where the reports go (JUnit, JSON, NDJSON; default
#                     .deskgate/api-fuzz/<time>)
#   ST_RUN_ARGS       passed to every `st run` as they are (e.g. --include-path-regex)
#
# "Schema-valid requests are accepted" holds only on a gate that can grant every one: the
# wallet funded, every profile fitting a host, the token asset configured (a claim
# refused 402 or 422 for want of those is a finding). tests/api_schema_fuzz.rs sets up
# such a gate and runs this script.
#
# The credential comes from DESKGATE_API_FUZZ_TOKEN (sent as `Authorization: Bearer`), so
# that it is never on a command line; schemathesis reports show it as [Filtered]. Its
# checks and their settings are in the configuration written below (schemathesis.toml).
# Schemathesis (pinned with its dependencies) lives in a virtual environment of its own,
# .deskgate/venv-schemathesis, made on first use with pip from PyPI (CPython 3.11+).
# Exit status: 0 when every pass found nothing, 1 on a finding, 2 on a usage error.
set -euo pipefail
LOG_TAG=api-fuzz
# shellcheck source=scripts/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

# 4.32.5 reads OpenAPI 3.1 (JSON Schema 2020-12) and has the coverage, fuzzing and
# stateful phases and the checks used here; its dependencies are pinned too, since a
# new Hypothesis draws other examples from the same seed.
SCHEMATHESIS_VERSION=4.32.5
PINNED=(
    schemathesis==$SCHEMATHESIS_VERSION
    anyio==4.16.0 certifi==2026.10.19.post1 charset-normalizer==3.5.3 click==8.5.1
    graphql-core==3.3.2 harfile==0.6.0 hypothesis==6.170.27 hypothesis-graphql==0.13.5
    idna==3.21 iniconfig==2.3.1 jsonschema_rs==0.60.3 markdown-it-py==4.3.0
    MarkupSafe==3.0.4 mdurl==0.1.2 packaging==26.4 pluggy==1.7.0 Pygments==2.21.0
    pyrate-limiter==4.6.0 pytest==9.2.0 PyYAML==6.0.4 requests==2.34.2 rich==15.0.0
    sortedcontainers==2.4.0 typing_extensions==4.16.0 urllib3==2.8.0 Werkzeug==3.1.9
)
VENV=$STATE_DIR/venv-schemathesis
DOC_PATH=/api/v1/openapi.json
LOGOUT=/api/v1/auth/logout

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2
    exit 2
}

examples=${DESKGATE_API_FUZZ_EXAMPLES:-50}
seed=${DESKGATE_API_FUZZ_SEED:-18}
operations=user
report_dir=
headers=()
base=
while (($#)); do
    case $1 in
    -n) examples=${2:?-n needs a number}; shift 2 ;;
    --seed) seed=${2:?--seed needs a number}; shift 2 ;;
    --operations) operations=${2:?--operations needs user or admin}; shift 2 ;;
    -H) headers+=("${2:?-H needs NAME: VALUE}"); shift 2 ;;
    --report-dir) report_dir=${2:?--report-dir needs a directory}; shift 2 ;;
    -h | --help) usage ;;
    --) shift; break ;;
    -*) warn "unknown option $1"; usage ;;
    *) [[ -z $base ]] || usage; base=${1%/}; shift ;;
    esac
done
extra=("$@")
[[ -n $base ]] || usage
[[ $examples =~ ^[1-9][0-9]*$ ]] || die "-n must be a positive number, not '$examples'"
[[ $seed =~ ^[0-9]+$ ]] || die "--seed must be a number, not '$seed'"
[[ $operations == user || $operations == admin ]] || die "--operations is user or admin, not '$operations'"
for header in "${headers[@]}"; do
    [[ $header =~ ^[A-Za-z0-9-]+:\ ?[^[:cntrl:]]*$ ]] || die "-H wants 'NAME: VALUE', not '$header'"
done

# The virtual environment, made once; remade when the pinned version changed.
ensure_schemathesis() {
    if [[ -x $VENV/bin/st ]] && [[ $("$VENV/bin/st" --version 2>/dev/null) == *" $SCHEMATHESIS_VERSION" ]]; then
        return 0
    fi
    local python
    python=$(command -v python3) || die "python3 is missing; schemathesis needs CPython 3.11 or later"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "$("$python" --version) is too old; schemathesis $SCHEMATHESIS_VERSION needs Python 3.11 or later"
    if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
        apt_install python3-venv
    fi
    ensure_state_dir
    log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV (log: $STATE_DIR/api-fuzz-pip.log)"
    rm -rf -- "$VENV"
    "$python" -m venv "$VENV" >"$STATE_DIR/api-fuzz-pip.log" 2>&1 || {
        show_log_tail "$STATE_DIR/api-fuzz-pip.log"
        die "python3 -m venv $VENV failed"
    }
    if ! "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
        "${PINNED[@]}" >>"$STATE_DIR/api-fuzz-pip.log" 2>&1; then
        show_log_tail "$STATE_DIR/api-fuzz-pip.log"
        rm -rf -- "$VENV"
        die "pip could not install schemathesis $SCHEMATHESIS_VERSION: is PyPI (https://pypi.org) reachable from here? (a proxy goes in HTTPS_PROXY or PIP_INDEX_URL)"
    fi
}

ensure_schemathesis

status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$base$DOC_PATH" || true)
case $status in
200) ;;
000 | "") die "nothing answers at $base" ;;
*) die "GET $base$DOC_PATH answered $status: start the gate with DESKGATE_DOCS_ENABLED=true" ;;
esac

report_dir=${report_dir:-$STATE_DIR/api-fuzz/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p -- "$report_dir"
report_dir=$(cd -- "$report_dir" && pwd -P)
work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT

# A TOML basic string.
toml_string() {
    local s=${1//\\/\\\\}
    printf '"%s"' "${s//\"/\\\"}"
}

# The configuration: headers (the token stays off the command line) and the checks:
# every one, but for the exceptions at the end, each unsound for the operations named.
{
    printf '[headers]\n'
    if [[ -n ${DESKGATE_API_FUZZ_TOKEN:-} ]]; then
        printf 'Authorization = %s\n' "$(toml_string "Bearer $DESKGATE_API_FUZZ_TOKEN")"
    fi
    for header in "${headers[@]}"; do
        printf '%s = %s\n' "$(toml_string "${header%%:*}")" "$(toml_string "$(sed 's/^ //' <<<"${header#*:}")")"
    done
    # Failing cases are kept with this run's reports (for `st replay`), not in the
    # current directory, and no run starts from an earlier run's failures.
    printf '\n[cache]\ndirectory = %s\n' "$(toml_string "$report_dir/cache")"
    cat <<'EOF'

[warnings]
# A run whose credential stopped working (or whose patterns schemathesis cannot
# generate from) tested nothing worth a pass.
fail-on = ["missing_auth", "unsupported_regex", "unresolvable_reference"]

# Every check schemathesis has, each named (this is its default set, written out so that
# a release that changes the default shows here). Set here rather than with --checks,
# which would override the exceptions below.
[checks]
not_a_server_error.enabled = true
status_code_conformance.enabled = true
content_type_conformance.enabled = true
response_headers_conformance.enabled = true
response_schema_conformance.enabled = true
negative_data_rejection.enabled = true
positive_data_acceptance.enabled = true
missing_required_header.enabled = true
unsupported_method.enabled = true
allow_header_conformance.enabled = true
use_after_free.enabled = true
ensure_resource_availability.enabled = true
ignored_auth.enabled = true
object_level_authorization.enabled = true

# The two WebSocket routes. Schemathesis speaks plain HTTP and cannot make a WebSocket
# handshake, so the gate answers every request that gets past its checks 426 (not an
# upgrade) whatever its parameters: "valid data is accepted" and "invalid data is
# refused" cannot both hold for it. The other checks still run on these routes.
[[operations]]
include-path-regex = "^/api/v1/sessions/\\{id\\}/(events|vnc)$"
checks.positive_data_acceptance.enabled = false
checks.negative_data_rejection.enabled = false

# WebRTC offers: their credential is a single-use ticket in the query, issued for a
# running session and good for 30 s, which no generated request holds, so every answer
# that gets that far is a 401, as it should be: no sign of a lost credential here.
[[operations]]
include-path = "/api/v1/sessions/{id}/webrtc"
warnings.fail-on = ["unsupported_regex", "unresolvable_reference"]

# Sign-in: a schema-valid message and signature are accepted only when the message is
# one the gate issued (its nonce, its time window) and the signature is the wallet's,
# which no schema can say; refusing the others (400, 401) is what the operation is for.
[[operations]]
include-path = "/api/v1/auth/verify"
checks.positive_data_acceptance.enabled = false
EOF
} >"$work/schemathesis.toml"
chmod 600 "$work/schemathesis.toml"

# st run ARGS... as one pass named $1; its output and reports go under $report_dir/$1.
passes=()
failed=0
run_pass() {
    local name=$1
    shift
    local dir=$report_dir/$name
    mkdir -p -- "$dir"
    local command=(
        "$VENV/bin/st" --config-file "$work/schemathesis.toml" run "$base$DOC_PATH"
        --url "$base"
        --phases examples,coverage,fuzzing,stateful
        --max-examples "$examples"
        --seed "$seed"
        --workers 1
        --generation-database none
        --request-timeout 30
        --continue-on-failure
        --no-color
        --report junit,json,ndjson --report-dir "$dir"
        "$@" "${extra[@]}"
    )
    log "pass $name: st run ... --max-examples $examples --seed $seed $* ${extra[*]}"
    local started=$SECONDS rc=0
    # From a directory of its own: nothing of schemathesis's lands where it was called.
    (cd -- "$work" && "${command[@]}") 2>&1 | tee "$dir/output.txt" || rc=$?
    passes+=("$name:$rc:$((SECONDS - started))")
    ((rc == 0)) || failed=1
}

case $operations in
user)
    run_pass user --exclude-path-regex '^/api/v1/admin/' --exclude-path "$LOGOUT"
    run_pass logout --include-path "$LOGOUT"
    ;;
admin)
    run_pass admin --include-path-regex '^/api/v1/admin/'
    ;;
esac

# The figures of every pass, from its NDJSON events: operations, test cases, requests by
# status, checks run, failures.
"$VENV/bin/python" - "$report_dir" "${passes[@]}" <<'EOF'
import collections, glob, json, re, sys

report_dir, passes = sys.argv[1], sys.argv[2:]
for entry in passes:
    name, rc, seconds = entry.split(":")
    statuses, checks, failed_checks, operations = collections.Counter(), 0, collections.Counter(), set()
    for path in glob.glob(f"{report_dir}/{name}/ndjson-*.ndjson"):
        for line in open(path, encoding="utf-8"):
            event = json.loads(line)
            finished = event.get("ScenarioFinished")
            if not finished:
                continue
            recorder = finished["recorder"]
            for interaction in recorder.get("interactions", {}).values():
                response = interaction.get("response")
                statuses[response["status_code"] if response else "no answer"] += 1
            for results in recorder.get("checks", {}).values():
                for result in results:
                    checks += 1
                    if result["status"] != "success":
                        failed_checks[result["name"]] += 1
            # A stateful scenario's label names no one operation.
            if recorder.get("interactions") and re.match(r"^[A-Z]+ /", recorder["label"]):
                operations.add(recorder["label"])
    run = {}
    for path in glob.glob(f"{report_dir}/{name}/json-*.json"):
        run = json.load(open(path, encoding="utf-8"))
    cases = run.get("test_cases", {})
    server_errors = sum(n for s, n in statuses.items() if isinstance(s, int) and s >= 500)
    print(
        f"[api-fuzz] {name}: {'passed' if rc == '0' else 'FAILED'} in {seconds} s; "
        f"seed {run.get('seed')}; {len(operations)} operations, "
        f"{cases.get('generated', 0)} test cases, {sum(statuses.values())} requests, "
        f"{checks} checks, {cases.get('unique_failures', 0)} unique failures, "
        f"{server_errors} answers 5xx"
    )
    print(f"[api-fuzz] {name}: answers by status: "
          + ", ".join(f"{s} x{n}" for s, n in sorted(statuses.items(), key=lambda kv: str(kv[0]))))
    if failed_checks:
        print(f"[api-fuzz] {name}: failed checks: "
              + ", ".join(f"{c} x{n}" for c, n in sorted(failed_checks.items())))
EOF
log "reports: $report_dir"
if ((failed)); then
    replay=(scripts/api-fuzz.sh --operations "$operations" -n "$examples" --seed "$seed")
    for header in "${headers[@]}"; do
        replay+=(-H "$header")
    done
    replay+=("$base")
    ((${#extra[@]} == 0)) || replay+=(-- "${extra[@]}")
    log "FAILED (seed $seed); replay with DESKGATE_API_FUZZ_TOKEN set as before: $(printf '%q ' "${replay[@]}")"
    exit 1
fi
