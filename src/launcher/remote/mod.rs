//! The remote launcher backend: a `deskgate launcher` service on each GPU
//! host ([`service`]), the gate's client for one of them ([`client`]) and the
//! pool that routes each session to its host ([`pool`]), and the gate's
//! way to those hosts' desktops ([`media`], over [`splice`]). [`wire`] holds the
//! JSON both sides speak, so neither can drift from the other. With
//! discovery, [`fleet`] finds the hosts by DNS and adds them to the pool as
//! they come, numbered by [`host_book`].

pub mod client;
pub mod fleet;
pub mod host_book;
pub mod media;
pub mod pool;
pub mod service;
pub mod splice;
pub mod wire;
