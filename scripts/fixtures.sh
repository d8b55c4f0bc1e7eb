#!/usr/bin/env bash
# Regenerates the checked-in Solidity test artifacts with solc-js:
#   tests/fixtures/<Name>.sol  ->  tests/fixtures/artifacts/<Name>.abi, <Name>.bin
# Tests deploy the .bin on anvil; they never compile at test time. Run this after
# editing a fixture and commit the result (`git diff` shows what changed).
set -euo pipefail
LOG_TAG=fixtures
# shellcheck source=scripts/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

FIXTURES=$REPO/tests/fixtures
OUT=$FIXTURES/artifacts
SOLCJS=${DESKGATE_SOLCJS:-$REPO/.tools/node_modules/.bin/solcjs}
if [[ ! -x $SOLCJS ]]; then
    "$REPO/scripts/anvil.sh" up >/dev/null
fi
[[ -x $SOLCJS ]] || die "solcjs missing at $SOLCJS (scripts/anvil.sh installs it)"

work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT
mkdir -p -- "$OUT"
shopt -s nullglob
for source in "$FIXTURES"/*.sol; do
    name=$(basename -- "$source" .sol)
    log "compiling $name.sol ($("$SOLCJS" --version))"
    (cd -- "$FIXTURES" && "$SOLCJS" --optimize --abi --bin -o "$work/$name" "$name.sol" >/dev/null)
    # solcjs names its output <file>_<contract>.<ext>; keep the contract of the same name.
    cp -- "$work/$name/${name}_sol_${name}.abi" "$OUT/$name.abi"
    cp -- "$work/$name/${name}_sol_${name}.bin" "$OUT/$name.bin"
done
log "artifacts in ${OUT#"$REPO"/}"
