//! EIP-4361 (Sign-In with Ethereum) messages: build and parse.
