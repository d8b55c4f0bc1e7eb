//! Sign-in storage: EIP-4361 challenges and bearer tokens.
