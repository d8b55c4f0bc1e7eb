//! Wallet sign-in: nonces, signature checks (EIP-191, EIP-1271), tokens.
