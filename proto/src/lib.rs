//! Protocol definitions for vtguard.
//!
//! The Vitess messages (wire compatible with Vitess) and the admin API arrive with the gRPC
//! transport; the kernel layer needs none of them yet.
