//! The Ethereum JSON-RPC adapter (alloy) behind the chain watcher's port.
