//! Vitess's validSQL corpus (testdata/vitess-validsql.tsv) through the classifier: coverage in
//! `vitess` mode, and no table missed with nothing granted.

use std::collections::BTreeSet;

use super::{
    classify, reference,
    reference::{differential, Compare},
    Class, Mode,
};
use crate::acl::{
    decide::{decide, Decision, Settings},
    tableacl::{Role, TableAcl},
};

const CORPUS: &str = include_str!("../testdata/vitess-validsql.tsv");
const ALLOWED_WITH_NOTHING: &str = include_str!("../testdata/allowed-with-nothing-granted.txt");

/// One corpus entry: where it comes from, its text as escaped in the file, and unescaped.
pub(crate) struct Entry {
    pub source: &'static str,
    pub raw: &'static str,
    pub sql: String,
}

/// The corpus statements, unescaped (`\\`, `\t`, `\n`, `\r`).
pub(crate) fn corpus() -> Vec<Entry> {
    CORPUS
        .lines()
        .skip(1)
        .filter_map(|line| {
            let (source, raw) = line.split_once('\t')?;
            let mut sql = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    match chars.next() {
                        Some('t') => sql.push('\t'),
                        Some('n') => sql.push('\n'),
                        Some('r') => sql.push('\r'),
                        Some(other) => sql.push(other),
                        None => sql.push('\\'),
                    }
                } else {
                    sql.push(c);
                }
            }
            Some(Entry { source, raw, sql })
        })
        .collect()
}

fn settings(mode: Mode) -> Settings {
    Settings {
        strict: true,
        dry_run: false,
        exempt: None,
        mode,
    }
}

/// Every role on every table for `u`.
fn everything() -> TableAcl {
    TableAcl::parse(
        "all.json",
        br#"{"table_groups": [{"name": "all", "table_names_or_prefixes": ["%"], "readers": ["u"], "writers": ["u"], "admins": ["u"]}]}"#,
    )
    .expect("acl")
}

/// Nothing for `u` (one group that lists someone else).
fn nothing() -> TableAcl {
    TableAcl::parse(
        "none.json",
        br#"{"table_groups": [{"name": "g", "table_names_or_prefixes": ["unrelated"], "readers": ["x"], "writers": ["x"], "admins": ["x"]}]}"#,
    )
    .expect("acl")
}

/// Corpus statements `vitess` mode does not classify, with the reason (the README lists
/// them too).
const VITESS_EXCEPTIONS: &[(&str, &str)] = &[];

/// Corpus statements secure mode cannot read, with the reason.
const SECURE_UNREADABLE: &[(&str, &str)] = &[(
    "select 1 from t // aa",
    "`//` is a comment only to Vitess; MySQL rejects it, so secure mode does too",
)];

/// Where sqlparser's AST names something that is not a table: (statement, name, why).
const REFERENCE_MISREADS: &[(&str, &str, &str)] = &[
    (
        "update /* ignore */ ignore a set b = 3",
        "ignore",
        "sqlparser reads the IGNORE modifier as the table name",
    ),
    (
        "delete from a1, a2 using t1 as a1 inner join t2 as a2 where a1.id=a2.id",
        "a1",
        "a1 is an alias of t1 in the USING list",
    ),
    (
        "delete from a1, a2 using t1 as a1 inner join t2 as a2 where a1.id=a2.id",
        "a2",
        "a2 is an alias of t2 in the USING list",
    ),
    (
        "DROP INDEX Indexes ON mydb.mytable",
        "Indexes",
        "sqlparser names the index; the table is mytable",
    ),
];

#[test]
fn vitess_mode_classifies_the_validsql_corpus() {
    let acl = everything();
    let corpus = corpus();
    let mut denied = Vec::new();
    for e in &corpus {
        if let Decision::Deny { message, .. } =
            decide(&acl, &settings(Mode::Vitess), "u", &[], &e.sql)
        {
            denied.push((e.source, e.sql.clone(), message));
        }
    }
    let allowed = corpus.len() - denied.len();
    let share = allowed as f64 * 100.0 / corpus.len() as f64;
    println!(
        "vitess mode, every role granted: {allowed} of {} validSQL statements allowed ({share:.2} %)",
        corpus.len()
    );
    assert!(corpus.len() >= 1500, "the corpus is all there");
    assert!(share >= 99.5, "{share:.2} %: {denied:#?}");
    let got: BTreeSet<&str> = denied.iter().map(|(_, sql, _)| sql.as_str()).collect();
    let want: BTreeSet<&str> = VITESS_EXCEPTIONS.iter().map(|(sql, _)| *sql).collect();
    assert_eq!(got, want, "the exceptions are the listed ones: {denied:#?}");
}

#[test]
fn secure_mode_reads_the_validsql_corpus() {
    let acl = everything();
    let mut unreadable = BTreeSet::new();
    let mut by_design = 0;
    for e in corpus() {
        if let Decision::Deny { message, .. } =
            decide(&acl, &settings(Mode::Secure), "u", &[], &e.sql)
        {
            if message.starts_with("vtguard: SQL cannot be parsed") {
                unreadable.insert(e.sql);
            } else {
                by_design += 1;
            }
        }
    }
    println!(
        "secure mode, every role granted: {by_design} denied by design, {} unreadable",
        unreadable.len()
    );
    let unreadable: BTreeSet<&str> = unreadable.iter().map(|s| s.trim()).collect();
    let want: BTreeSet<&str> = SECURE_UNREADABLE.iter().map(|(s, _)| *s).collect();
    assert_eq!(unreadable, want);
}

/// With nothing granted, secure mode allows only the statements reviewed as naming no table;
/// and for every statement sqlparser can parse, every table its AST names is one the
/// extractor names too.
#[test]
fn nothing_granted_denies_every_validsql_statement_that_names_a_table() {
    let acl = nothing();
    let corpus = corpus();
    let mut allowed = BTreeSet::new();
    for e in &corpus {
        if decide(&acl, &settings(Mode::Secure), "u", &[], &e.sql).is_allow() {
            allowed.insert(e.raw);
        }
    }
    let reviewed: BTreeSet<&str> = ALLOWED_WITH_NOTHING
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let new: Vec<_> = allowed.difference(&reviewed).collect();
    let gone: Vec<_> = reviewed.difference(&allowed).collect();
    assert!(
        new.is_empty() && gone.is_empty(),
        "allowed with nothing granted but not reviewed: {new:#?}\nreviewed but now denied: {gone:#?}"
    );
    // The AST cross-check.
    let mut compared = 0;
    let mut missed = Vec::new();
    for e in &corpus {
        let Some((per_statement, ctes)) = reference::needs(&e.sql) else {
            continue;
        };
        let ours: BTreeSet<String> = classify(&e.sql, Mode::Secure)
            .expect("the corpus is readable")
            .into_iter()
            .flat_map(|c| match c {
                Class::Checked { needs, .. } => needs.into_iter().map(|(_, t)| t).collect(),
                _ => Vec::new(),
            })
            .collect();
        let denied = classify(&e.sql, Mode::Secure)
            .expect("readable")
            .iter()
            .any(|c| matches!(c, Class::Denied { .. }));
        for needs in per_statement.into_iter().flatten() {
            compared += 1;
            for (_, t) in needs {
                let misread = REFERENCE_MISREADS
                    .iter()
                    .any(|(sql, name, _)| *sql == e.sql && *name == t);
                let dual = t.eq_ignore_ascii_case("dual");
                if !ours.contains(&t) && !ctes.contains(&t) && !denied && !dual && !misread {
                    missed.push((e.source, e.sql.clone(), t));
                }
            }
        }
    }
    println!(
        "{} corpus statements, {} allowed with nothing granted (reviewed), {compared} cross-checked against sqlparser's AST",
        corpus.len(),
        allowed.len()
    );
    assert!(
        missed.is_empty(),
        "tables sqlparser sees and the extractor misses: {missed:#?}"
    );
    let _ = Role::Reader;
}

/// The fuzz target's property holds on the whole corpus (its seeds).
#[test]
fn the_extractor_and_the_ast_agree_on_the_corpus() {
    let diffs: Vec<String> = corpus()
        .iter()
        .filter_map(|e| {
            differential(&e.sql, Compare::Exact)
                .and_then(|()| differential(&e.sql, Compare::NoneMissed))
                .err()
                .map(|d| format!("{}\n{d}", e.sql))
        })
        .collect();
    assert!(diffs.is_empty(), "{}", diffs.join("\n\n"));
}
