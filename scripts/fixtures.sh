#!/usr/bin/env bash
# Regenerates the checked-in Solidity artifacts with solc-js:
#   contracts/<Name>.sol       ->  contracts/artifacts/<Name>.abi, <Name>.bin
#     (the gate's own contract code, embedded in the binary)
#   tests/fixtures/<Name>.sol  ->  tests/fixtures/artifacts/<Name>.abi, <Name>.bin
#     (contracts tests deploy on anvil)
# Nothing compiles Solidity at build or test time. Run this after editing a .sol
# file and commit the result (`git diff` shows what changed).
set -euo pipefail
LOG_TAG=fixtures
# shellcheck source=scripts/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

SOLCJS=${DESKGATE_SOLCJS:-$REPO/.tools/node_modules/.bin/solcjs}
if [[ ! -x $SOLCJS ]]; then
    "$REPO/scripts/anvil.sh" up >/dev/null
fi
[[ -x $SOLCJS ]] || die "solcjs missing at $SOLCJS (scripts/anvil.sh installs it)"

work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT

# compile_dir DIR: every DIR/<Name>.sol to DIR/artifacts/<Name>.{abi,bin}.
compile_dir() {
    local dir=$1 source name
    mkdir -p -- "$dir/artifacts"
    shopt -s nullglob
    for source in "$dir"/*.sol; do
        name=$(basename -- "$source" .sol)
        log "compiling ${source#"$REPO"/} ($("$SOLCJS" --version))"
        (cd -- "$dir" && "$SOLCJS" --optimize --abi --bin -o "$work/$name" "$name.sol" >/dev/null)
        # solcjs names its output <file>_<contract>.<ext>; keep the contract of the same name.
        cp -- "$work/$name/${name}_sol_${name}.abi" "$dir/artifacts/$name.abi"
        cp -- "$work/$name/${name}_sol_${name}.bin" "$dir/artifacts/$name.bin"
    done
    log "artifacts in ${dir#"$REPO"/}/artifacts"
}

compile_dir "$REPO/contracts"
compile_dir "$REPO/tests/fixtures"
