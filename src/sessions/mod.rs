//! Sessions on the gate: the supervised actor tree of `deskgate-actors` on its
//! real adapters ([`tree`]), the GPU profiles users claim by name
//! ([`profiles`]) and the PostgreSQL session store ([`store`]).

pub mod profiles;
pub mod store;
pub mod tree;
