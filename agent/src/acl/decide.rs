//! Table-ACL decisions with Vitess's semantics: strict mode, dry run, the exempt ACL, and
//! Vitess's denial text.

use super::{
    sql::{classify, Class, Mode, ParseError},
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

/// How an allow made by dry run starts its reason; the denial follows.
const DRY_RUN: &str = "dry run; would deny: ";

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// A denial because the statement cannot be read (not an ACL refusal, nor a kind secure
    /// mode refuses by design).
    pub fn is_unreadable(&self) -> bool {
        matches!(self, Decision::Deny { message, .. } if is_unreadable(message))
    }

    /// Under dry run: the denial this allow stands for.
    pub fn would_deny(&self) -> Option<&str> {
        match self {
            Decision::Allow { reason } => reason.strip_prefix(DRY_RUN),
            Decision::Deny { .. } => None,
        }
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

/// The exempt ACL and strict mode, which decide before any table is looked at.
fn gate(s: &Settings, username: &str, groups: &[String]) -> Option<Decision> {
    if let Some(ex) = &s.exempt {
        if username == ex || groups.iter().any(|g| g == ex) {
            return Some(Decision::Allow {
                reason: format!("exempt ({ex})"),
            });
        }
    }
    (!s.strict).then(|| Decision::Allow {
        reason: "queryserver-config-strict-table-acl is off".into(),
    })
}

/// Dry run: a denial is reported, not enforced.
fn dry_run(s: &Settings, verdict: Decision) -> Decision {
    match verdict {
        Decision::Deny { message, .. } if s.dry_run => Decision::Allow {
            reason: format!("{DRY_RUN}{message}"),
        },
        v => v,
    }
}

/// Decides one (role, table) need outside SQL — e.g. MessageStream, which needs WRITER on
/// the message table.
pub fn decide_table(
    acl: &TableAcl,
    s: &Settings,
    username: &str,
    groups: &[String],
    plan: &str,
    role: Role,
    table: &str,
) -> Decision {
    if let Some(d) = gate(s, username, groups) {
        return d;
    }
    let verdict = if acl.allows(username, groups, role, table) {
        Decision::Allow {
            reason: format!("{role} on {table:?} is granted"),
        }
    } else {
        Decision::Deny {
            message: denial_message(plan, username, groups, table),
            role: Some(role),
            table: Some(table.to_owned()),
        }
    };
    dry_run(s, verdict)
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
    if let Some(d) = gate(s, username, groups) {
        return d;
    }
    decide_classes(
        acl,
        s,
        username,
        groups,
        sql,
        classify(sql, s.mode).as_deref(),
    )
}

/// [`decide`] with the statement already classified (the enforcer's shape cache), for a caller
/// that the exempt ACL and strict mode do not decide.
pub(crate) fn decide_classes(
    acl: &TableAcl,
    s: &Settings,
    username: &str,
    groups: &[String],
    sql: &str,
    classes: Result<&[Class], &ParseError>,
) -> Decision {
    if let Some(d) = gate(s, username, groups) {
        return d;
    }
    let verdict = match classes {
        Err(e) => {
            let digest = digest(sql);
            tracing::info!(digest = %digest, reason = %e, "table ACL: a statement cannot be read");
            Decision::Deny {
                message: format!(
                    "vtguard: {e}; the statement (sha256 {}) is refused: check its syntax against MySQL's",
                    &digest[..16]
                ),
                role: None,
                table: None,
            }
        }
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
                            if !acl.allows(username, groups, *role, table) {
                                verdict = Decision::Deny {
                                    message: denial_message(plan, username, groups, table),
                                    role: Some(*role),
                                    table: Some(table.clone()),
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
    dry_run(s, verdict)
}

/// How the message of a statement that cannot be read starts.
const UNREADABLE: &str = "vtguard: SQL cannot be parsed";

/// Whether a denial's message says the statement cannot be read (not an ACL refusal): the
/// MySQL listener answers those with ERR 1064, as a server does for a syntax error.
pub fn is_unreadable(message: &str) -> bool {
    message.starts_with(UNREADABLE)
}

/// The SHA-256 of a statement, in hex: logged instead of the text.
pub fn digest(sql: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(sql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
    fn message_stream_needs_writer_on_the_message_table() {
        let d = decide_table(
            &acl(),
            &strict(),
            "vtgate client 2",
            &[],
            "MessageStream",
            Role::Writer,
            "vt_insert_test",
        );
        let Decision::Deny { message, .. } = d else {
            panic!("denied")
        };
        assert_eq!(message, "MessageStream command denied to user 'vtgate client 2' for table 'vt_insert_test' (ACL check error)");
        assert!(decide_table(
            &acl(),
            &strict(),
            "vtgate client 1",
            &[],
            "MessageStream",
            Role::Writer,
            "vt_insert_test"
        )
        .is_allow());
        let dry = Settings {
            dry_run: true,
            ..strict()
        };
        assert!(decide_table(
            &acl(),
            &dry,
            "x",
            &[],
            "MessageStream",
            Role::Writer,
            "vt_insert_test"
        )
        .is_allow());
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

/// A table of (statement, identity) cases in both modes: each statement lists by hand the
/// (role, table) pairs it needs; each identity holds exactly one role on the test tables; the
/// expected decision follows from those two lists, not from the code under test.
#[cfg(test)]
mod table {
    use super::*;
    use Role::*;

    const ACL: &str = r#"{"table_groups": [
        {"name": "reads", "table_names_or_prefixes": ["t1", "t2", "seq", "p_%", "v1", "t9"], "readers": ["r", "team-r"], "writers": [], "admins": []},
        {"name": "writes", "table_names_or_prefixes": ["w1", "w2", "call:proc_w"], "readers": [], "writers": ["w", "team-w"], "admins": []},
        {"name": "ddl", "table_names_or_prefixes": ["a1", "a2"], "readers": [], "writers": [], "admins": ["a"]}
    ]}"#;

    /// (sql, needs) — `needs` written from docs/VITESS.md §3, by hand.
    const STATEMENTS: &[(&str, &[(Role, &str)])] = &[
        ("select * from t1", &[(Reader, "t1")]),
        ("SELECT a FROM `t1` WHERE b = 1", &[(Reader, "t1")]),
        ("select * from ks.t1", &[(Reader, "t1")]),
        (
            "select * from t1 join t2 on t1.a = t2.a",
            &[(Reader, "t1"), (Reader, "t2")],
        ),
        (
            "select * from t1 left join w1 using (a)",
            &[(Reader, "t1"), (Reader, "w1")],
        ),
        ("select * from (select * from t2) d", &[(Reader, "t2")]),
        (
            "select (select max(a) from t2) from t1",
            &[(Reader, "t1"), (Reader, "t2")],
        ),
        (
            "select * from t1 where exists (select 1 from w1)",
            &[(Reader, "t1"), (Reader, "w1")],
        ),
        (
            "select * from t1 union all select * from t2",
            &[(Reader, "t1"), (Reader, "t2")],
        ),
        (
            "with c as (select * from t1) select * from c",
            &[(Reader, "t1")],
        ),
        ("select * from p_orders", &[(Reader, "p_orders")]),
        ("select 1 from dual", &[]),
        ("select next value from seq", &[(Writer, "seq")]),
        ("select next 5 values from seq", &[(Writer, "seq")]),
        ("table t1", &[(Reader, "t1")]),
        ("TABLE ks.w1 ORDER BY a LIMIT 1", &[(Reader, "w1")]),
        ("select a into @v from t1 where b = 1", &[(Reader, "t1")]),
        (
            "select * from t1; table w1",
            &[(Reader, "t1"), (Reader, "w1")],
        ),
        ("insert into w1 values (1)", &[(Writer, "w1")]),
        (
            "insert into w1 (a) select a from t1",
            &[(Writer, "w1"), (Reader, "t1")],
        ),
        ("replace into w1 values (1)", &[(Writer, "w1")]),
        ("update w1 set a = 1 where b = 2", &[(Writer, "w1")]),
        (
            "update w1 join w2 on w1.a = w2.a set w1.b = 1",
            &[(Writer, "w1"), (Writer, "w2")],
        ),
        (
            "update w1 set a = (select max(a) from t1)",
            &[(Writer, "w1"), (Reader, "t1")],
        ),
        ("delete from w1 where a = 1", &[(Writer, "w1")]),
        (
            "delete w1 from w1 join w2 on w1.a = w2.a",
            &[(Writer, "w1"), (Writer, "w2")],
        ),
        (
            "delete from w1 where a in (select a from t1)",
            &[(Writer, "w1"), (Reader, "t1")],
        ),
        ("create table a1 (id int)", &[(Admin, "a1")]),
        ("alter table a1 add column x int", &[(Admin, "a1")]),
        ("drop table a1", &[(Admin, "a1")]),
        (
            "drop table if exists a1, a2",
            &[(Admin, "a1"), (Admin, "a2")],
        ),
        ("rename table a1 to a2", &[(Admin, "a1"), (Admin, "a2")]),
        ("truncate table a1", &[(Admin, "a1")]),
        ("/*!50000 drop table a1 */", &[(Admin, "a1")]),
        (
            "select * from t1; delete from w1",
            &[(Reader, "t1"), (Writer, "w1")],
        ),
        (
            "select * from t1 /*! ; drop table a1 */",
            &[(Reader, "t1"), (Admin, "a1")],
        ),
    ];

    /// What a mode does with a statement.
    enum Want {
        /// Not checked: allowed whoever asks.
        Unchecked,
        /// Checked: these (role, table) pairs, by hand.
        Needs(&'static [(Role, &'static str)]),
        /// Denied outright.
        Denied,
    }
    use Want::*;

    /// Statements Vitess leaves unchecked, or that the parser cannot read but MySQL runs:
    /// (sql, vitess mode, secure mode).
    const MODE_STATEMENTS: &[(&str, Want, Want)] = &[
        (
            "load data infile '/tmp/x' into table w1",
            Unchecked,
            Needs(&[(Writer, "w1")]),
        ),
        (
            "LOAD DATA LOCAL INFILE 'x' REPLACE INTO TABLE ks.`w1` FIELDS TERMINATED BY ','",
            Unchecked,
            Needs(&[(Writer, "w1")]),
        ),
        (
            "load data infile 'x' into table t1",
            Unchecked,
            Needs(&[(Writer, "t1")]),
        ),
        (
            "load xml infile 'x' into table w2",
            Unchecked,
            Needs(&[(Writer, "w2")]),
        ),
        ("handler t1 open", Unchecked, Needs(&[(Reader, "t1")])),
        ("handler w1 read first", Unchecked, Needs(&[(Reader, "w1")])),
        ("call p()", Unchecked, Needs(&[(Writer, "call:p")])),
        ("call ks.p(1, 2)", Unchecked, Needs(&[(Writer, "call:p")])),
        (
            "call proc_w(1)",
            Unchecked,
            Needs(&[(Writer, "call:proc_w")]),
        ),
        (
            "prepare s from 'select * from t1'",
            Unchecked,
            Needs(&[(Reader, "t1")]),
        ),
        (
            "prepare s from 'delete from w1'",
            Unchecked,
            Needs(&[(Writer, "w1")]),
        ),
        (
            "prepare s from 'drop table a1'",
            Unchecked,
            Needs(&[(Admin, "a1")]),
        ),
        ("prepare s from @q", Unchecked, Denied),
        (
            "execute immediate 'delete from w1'",
            Unchecked,
            Needs(&[(Writer, "w1")]),
        ),
        ("execute immediate @q", Unchecked, Denied),
        (
            "select * from t1 into outfile '/tmp/x'",
            Needs(&[(Reader, "t1")]),
            Denied,
        ),
        (
            "select * into dumpfile '/tmp/x' from t1",
            Needs(&[(Reader, "t1")]),
            Denied,
        ),
        (
            "do (select max(a) from t1)",
            Unchecked,
            Needs(&[(Reader, "t1")]),
        ),
        (
            "do (select max(a) from w1)",
            Unchecked,
            Needs(&[(Reader, "w1")]),
        ),
        ("execute s", Unchecked, Unchecked),
        ("deallocate prepare s", Unchecked, Unchecked),
        ("handler t1 close", Unchecked, Unchecked),
    ];

    /// Identities: (username, groups, the one role it holds on its tables).
    const IDENTITIES: &[(&str, &[&str])] = &[
        ("r", &[]),
        ("x", &["team-r"]),
        ("w", &[]),
        ("y", &["team-w"]),
        ("a", &[]),
        ("nobody", &[]),
    ];

    fn grants(user: &str, groups: &[&str], role: Role, table: &str) -> bool {
        let reader_tables = ["t1", "t2", "seq", "v1", "t9"];
        let member =
            |names: &[&str]| names.contains(&user) || groups.iter().any(|g| names.contains(g));
        match role {
            Reader => {
                (reader_tables.contains(&table) || table.starts_with("p_"))
                    && member(&["r", "team-r"])
            }
            Writer => ["w1", "w2", "call:proc_w"].contains(&table) && member(&["w", "team-w"]),
            Admin => ["a1", "a2"].contains(&table) && member(&["a"]),
        }
    }

    #[test]
    fn at_least_150_cases_in_both_modes() {
        let acl = TableAcl::parse("acl.json", ACL.as_bytes()).expect("acl");
        let mut cases = 0;
        for mode in [Mode::Vitess, Mode::Secure] {
            let s = Settings {
                strict: true,
                dry_run: false,
                exempt: Some("dba".into()),
                mode,
            };
            for (sql, needs) in STATEMENTS {
                for (user, groups) in IDENTITIES {
                    let g: Vec<String> = groups.iter().map(|x| (*x).to_owned()).collect();
                    let want = needs.iter().all(|(role, t)| grants(user, groups, *role, t));
                    let got = decide(&acl, &s, user, &g, sql);
                    assert_eq!(
                        got.is_allow(),
                        want,
                        "{mode:?} {user} {groups:?}: {sql}: {got:?}"
                    );
                    if let Decision::Deny { message, .. } = &got {
                        assert!(message.ends_with("(ACL check error)"), "{message}");
                    }
                    cases += 1;
                }
                // The exempt ACL skips every check.
                assert!(
                    decide(&acl, &s, "ops", &["dba".into()], sql).is_allow(),
                    "{sql}"
                );
                cases += 1;
            }
            // Statements where the modes differ.
            for (sql, vitess, secure) in MODE_STATEMENTS {
                for (user, groups) in IDENTITIES {
                    let g: Vec<String> = groups.iter().map(|x| (*x).to_owned()).collect();
                    let want = match if mode == Mode::Vitess { vitess } else { secure } {
                        Unchecked => true,
                        Denied => false,
                        Needs(needs) => {
                            needs.iter().all(|(role, t)| grants(user, groups, *role, t))
                        }
                    };
                    let got = decide(&acl, &s, user, &g, sql);
                    assert_eq!(
                        got.is_allow(),
                        want,
                        "{mode:?} {user} {groups:?}: {sql}: {got:?}"
                    );
                    cases += 1;
                }
            }
            // Statements neither mode checks, and unreadable SQL.
            for (sql, vitess_allows, secure_allows) in [
                ("set autocommit = 1", true, true),
                ("show tables", true, true),
                ("begin", true, true),
                ("commit", true, true),
                ("rollback", true, true),
                ("selec broken sql", false, false),
            ] {
                let want = if mode == Mode::Vitess {
                    vitess_allows
                } else {
                    secure_allows
                };
                assert_eq!(
                    decide(&acl, &s, "nobody", &[], sql).is_allow(),
                    want,
                    "{mode:?}: {sql}"
                );
                cases += 1;
            }
        }
        assert!(cases >= 150, "{cases} cases");
    }
}
