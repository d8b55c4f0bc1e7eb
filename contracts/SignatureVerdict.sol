// SPDX-License-Identifier: Apache-2.0
// deskgate's contract-wallet signature check (EIP-1271, with ERC-6492 for
// accounts not yet deployed). It is never deployed: the gate runs its
// creation code in a deployless eth_call (no `to`), and the constructor's
// return data is the verdict, one 32-byte word:
//   1  the wallet's isValidSignature returned the EIP-1271 magic value;
//   0  it returned anything else, reverted, ran out of its gas or returned
//      less than a word: the wallet refused the signature;
//   2  no code at `signer`, even after the ERC-6492 factory call: the
//      signature is simply not the signer's.
// Invariants: nothing the wallet or the factory does makes this call revert
// (each runs under its own gas cap, through assembly calls that copy at most
// one word of return data), so an eth_call error is the node's, never the
// wallet's; and as it runs inside eth_call, the factory's deployment is
// never persisted.
pragma solidity 0.8.37;

contract SignatureVerdict {
    constructor(
        address signer,
        bytes32 hash,
        address factory,
        bytes memory factoryCalldata,
        bytes memory signature
    ) {
        // Gas for the factory's deployment and for isValidSignature (a
        // multisig's check is a few ecrecovers; a deployment a few hundred
        // thousand). Locals, as inline assembly cannot read constants.
        uint256 factoryGas = 3_000_000;
        uint256 checkGas = 1_000_000;

        if (signer.code.length == 0 && factory != address(0)) {
            // ERC-6492: let the factory deploy the account, in this call only.
            // Its success is not trusted: the code check below decides.
            assembly {
                pop(call(factoryGas, factory, 0, add(factoryCalldata, 32), mload(factoryCalldata), 0, 0))
            }
        }

        uint256 verdict = 2;
        if (signer.code.length != 0) {
            bytes memory input = abi.encodeWithSelector(0x1626ba7e, hash, signature);
            bytes32 word;
            bool ok;
            assembly {
                mstore(0, 0)
                ok := staticcall(checkGas, signer, add(input, 32), mload(input), 0, 32)
                if lt(returndatasize(), 32) {
                    ok := 0
                }
                word := mload(0)
            }
            // Exactly the magic value, left-aligned and zero-padded.
            verdict = ok && word == bytes32(bytes4(0x1626ba7e)) ? 1 : 0;
        }

        assembly {
            mstore(0, verdict)
            return(0, 32)
        }
    }
}
