//! Table-ACL decisions with Vitess's semantics: strict mode, dry run, the exempt ACL, and
//! Vitess's denial text.

use super::{
    sql::{classify, Class, Mode},
    tableacl::{Role, TableAcl},
};

/// How decisions are made (Vitess's `queryserver-config-*` flags, and vtguard's mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `queryserver-config-strict-table-acl`: without it, nothing is ever denied.
    pub strict: bool,
    /// `queryserver-config-enable-table-acl-dry-run`: count would-be denials, deny nothing.
    pub dry_run: bool,
    /// `queryserver-config-acl-exempt-acl`: a user or group whose requests skip the checks.
    pub exempt: Option<String>,
    pub mode: Mode,
}

/// A decision, and the rule that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow {
        reason: String,
    },
    /// Refused; `message` is what the caller sees (Vitess's text for ACL denials).
    Deny {
        message: String,
        role: Option<Role>,
        table: Option<String>,
    },
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// Vitess's denial message.
pub fn denial_message(plan: &str, username: &str, groups: &[String], table: &str) -> String {
    if groups.is_empty() {
        format!("{plan} command denied to user '{username}' for table '{table}' (ACL check error)")
    } else {
        format!(
            "{plan} command denied to user '{username}', in groups [{}], for table '{table}' (ACL check error)",
            groups.join(", ")
        )
    }
}

/// Decides whether `username` (with `groups`) may run `sql`. Every statement of the string is
/// checked; the first denial wins.
pub fn decide(
    acl: &TableAcl,
    s: &Settings,
    username: &str,
    groups: &[String],
    sql: &str,
) -> Decision {
    if let Some(ex) = &s.exempt {
        if username == ex || groups.iter().any(|g| g == ex) {
            return Decision::Allow {
                reason: format!("exempt ({ex})"),
            };
        }
    }
    if !s.strict {
        return Decision::Allow {
            reason: "queryserver-config-strict-table-acl is off".into(),
        };
    }
    let verdict = match classify(sql, s.mode) {
        Err(e) => Decision::Deny {
            message: format!("vtguard: {e}"),
            role: None,
            table: None,
        },
        Ok(classes) => {
            let mut verdict = Decision::Allow {
                reason: "every table is granted".into(),
            };
            'statements: for c in classes {
                match c {
                    Class::Unchecked { .. } => {}
                    Class::Denied { reason } => {
                        verdict = Decision::Deny {
                            message: format!("vtguard: {reason}"),
                            role: None,
                            table: None,
                        };
                        break 'statements;
                    }
                    Class::Checked { plan, needs } => {
                        for (role, table) in needs {
                            if table == "dual" {
                                continue;
                            }
                            if !acl.allows(username, groups, role, &table) {
                                verdict = Decision::Deny {
                                    message: denial_message(plan, username, groups, &table),
                                    role: Some(role),
                                    table: Some(table),
                                };
                                break 'statements;
                            }
                        }
                    }
                }
            }
            verdict
        }
    };
    match verdict {
        Decision::Deny { message, .. } if s.dry_run => Decision::Allow {
            reason: format!("dry run; would deny: {message}"),
        },
        v => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl() -> TableAcl {
        TableAcl::parse(
            "acl.json",
            br#"{"table_groups": [{"name": "g", "table_names_or_prefixes": ["vt_insert_test"],
                 "readers": ["vtgate client 1"], "writers": ["vtgate client 1"], "admins": ["vtgate client 1"]}]}"#,
        )
        .expect("acl")
    }

    fn strict() -> Settings {
        Settings {
            strict: true,
            dry_run: false,
            exempt: None,
            mode: Mode::Secure,
        }
    }

    #[test]
    fn reference_scenario_decisions_and_messages() {
        let sql = "select * from vt_insert_test";
        assert!(decide(&acl(), &strict(), "vtgate client 1", &[], sql).is_allow());
        let Decision::Deny { message, .. } = decide(&acl(), &strict(), "vtgate client 2", &[], sql)
        else {
            panic!("client 2 must be denied")
        };
        assert_eq!(message, "Select command denied to user 'vtgate client 2' for table 'vt_insert_test' (ACL check error)");
        let groups = vec!["g1".to_owned(), "g2".to_owned()];
        let Decision::Deny { message, .. } = decide(
            &acl(),
            &strict(),
            "u",
            &groups,
            "delete from vt_insert_test",
        ) else {
            panic!("denied")
        };
        assert_eq!(message, "Delete command denied to user 'u', in groups [g1, g2], for table 'vt_insert_test' (ACL check error)");
        assert!(
            decide(
                &acl(),
                &strict(),
                "my-caller",
                &["vtgate client 1".into()],
                sql
            )
            .is_allow(),
            "group membership"
        );
        assert!(
            decide(&acl(), &strict(), "x", &[], "select 1 from dual").is_allow(),
            "dual is never checked"
        );
    }

    #[test]
    fn strict_dry_run_and_exempt() {
        let sql = "select * from vt_insert_test";
        let lax = Settings {
            strict: false,
            ..strict()
        };
        assert!(decide(&acl(), &lax, "nobody", &[], sql).is_allow());
        let dry = Settings {
            dry_run: true,
            ..strict()
        };
        let Decision::Allow { reason } = decide(&acl(), &dry, "nobody", &[], sql) else {
            panic!("dry run allows")
        };
        assert!(
            reason.contains("would deny: Select command denied to user 'nobody'"),
            "{reason}"
        );
        let exempt = Settings {
            exempt: Some("dba".into()),
            ..strict()
        };
        assert!(decide(
            &acl(),
            &exempt,
            "x",
            &["dba".into()],
            "drop table vt_insert_test"
        )
        .is_allow());
        assert!(!decide(&acl(), &exempt, "x", &[], "drop table vt_insert_test").is_allow());
    }

    #[test]
    fn every_statement_of_a_string_is_checked() {
        let d = decide(
            &acl(),
            &strict(),
            "vtgate client 1",
            &[],
            "select * from vt_insert_test; select * from secret",
        );
        let Decision::Deny { table, .. } = d else {
            panic!("second statement denied")
        };
        assert_eq!(table.as_deref(), Some("secret"));
        let d = decide(
            &acl(),
            &strict(),
            "vtgate client 1",
            &[],
            "select 1 from vt_insert_test /*!; drop table secret */",
        );
        assert!(!d.is_allow(), "executable comments are checked");
        let d = decide(&acl(), &strict(), "vtgate client 1", &[], "selec garbage");
        let Decision::Deny { message, .. } = d else {
            panic!("unparseable denied")
        };
        assert!(
            message.starts_with("vtguard: SQL cannot be parsed"),
            "{message}"
        );
    }
}
