//! holdfast-engine: what runs inside a holdfast node.
//!
//! (Crate documentation is written with the store; see `store`.)

pub mod disk;
pub mod store;
