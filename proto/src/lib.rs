//! Protocol definitions for vtguard: the Vitess messages it reads, written from Vitess's field
//! numbers (wire compatible with Vitess), compiled without a system protoc.
//!
//! vtguard itself never decodes and re-encodes a whole request (that would drop fields this
//! build does not know); it rewrites the caller-ID fields at the wire level and uses these
//! types to encode the fields it writes and to read what it logs. The tests use them to speak
//! to vtguard as Vitess components would.
#![allow(clippy::all, missing_docs)]

pub mod vtrpc {
    include!(concat!(env!("OUT_DIR"), "/vtrpc.rs"));
}
pub mod topodata {
    include!(concat!(env!("OUT_DIR"), "/topodata.rs"));
}
pub mod query {
    include!(concat!(env!("OUT_DIR"), "/query.rs"));
}
pub mod queryservice {
    include!(concat!(env!("OUT_DIR"), "/queryservice.rs"));
}
pub mod vtgate {
    include!(concat!(env!("OUT_DIR"), "/vtgate.rs"));
}
pub mod tableacl {
    include!(concat!(env!("OUT_DIR"), "/tableacl.rs"));
}
pub mod vtgateservice {
    include!(concat!(env!("OUT_DIR"), "/vtgateservice.rs"));
}

/// vtguard's admin API (policy through the CLI).
pub mod admin {
    include!(concat!(env!("OUT_DIR"), "/vtguard.admin.rs"));
}

/// The directory holding the .proto files (for tests that compile them for other languages).
pub const PROTO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vitess");
