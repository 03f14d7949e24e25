//! Table ACLs: Vitess's tableacl files and the decisions they make.
//!
//! This is the policy half of the table-ACL issue: loading and validating Vitess tableacl
//! files, and the role checks they answer. SQL classification and enforcement on the
//! listeners build on it.

pub mod sql;
pub mod tableacl;

pub use tableacl::{Role, TableAcl, TableGroup};
