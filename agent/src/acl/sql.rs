//! SQL → the (role, table) pairs a statement needs, per docs/VITESS.md §3.
//!
//! [`lexer`] tokenizes with MySQL's lexical rules and [`extract`] walks the tokens to every
//! place MySQL's grammar names a table; [`reference`] reads the same needs from sqlparser's
//! AST and serves as the cross-check in tests and fuzzing. Every statement of a
//! multi-statement string is classified; executable comments (`/*! … */`, `/*!50000 … */`,
//! `/*M! … */`) are read as code, since the server runs them.
//!
//! A text can read differently on the server: without backslash escapes (sql_mode
//! `NO_BACKSLASH_ESCAPES`), or with versioned comments skipped (an older server). Every such
//! reading is classified and their needs are added up, so a statement is allowed only if each
//! reading is; in secure mode a reading that cannot be read makes the statement unreadable.

#[cfg(test)]
mod corpus;
pub mod extract;
#[cfg(test)]
mod families;
pub mod lexer;
#[doc(hidden)]
pub mod reference;

use super::tableacl::Role;
use lexer::{Kind, Options, Token};

/// Vitess's decisions exactly, or with the holes Vitess leaves closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Vitess,
    Secure,
}

/// What one statement needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// The plan name (Select, Insert, …) and each (role, unqualified table) it needs.
    Checked {
        plan: &'static str,
        needs: Vec<(Role, String)>,
    },
    /// Not checked by table ACLs (SET, SHOW, BEGIN, … and, in `vitess` mode, LOAD DATA and CALL).
    Unchecked { kind: &'static str },
    /// Refused by design (secure mode), with the reason: it names the kind of statement and
    /// the setting that governs it.
    Denied { reason: String },
}

/// Why SQL could not be classified: the statement cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SQL cannot be parsed: {0}")]
pub struct ParseError(pub String);

/// How deep PREPARE 'PREPARE …' may nest before the text is refused.
const MAX_NESTING: usize = 3;
/// The oldest server version whose reading of versioned comments is checked (MySQL 5.7.0).
const OLDEST_SERVER: u32 = 50700;
/// Distinct server versions in versioned comments beyond which the text is refused.
const MAX_VERSIONS: usize = 6;

/// The statement's shape, as Vitess's plan cache normalises it: its tokens with number, string
/// and placeholder literals replaced by `?`, comments and spacing dropped. `None` when the
/// shape would not decide the classification alone, so the text must be classified itself:
/// the text does not lex, holds a backslash in a quoted token, a versioned comment or a `//`
/// comment (other readings depend on literal or comment text), or runs text from a literal
/// (PREPARE, EXECUTE).
///
/// Why two texts with one shape need the same (role, table) pairs: [`classify`] reads each
/// token's kind, and the text only of words, backticked names and double-quoted strings (kept
/// as written in the shape: identifiers, table names, keywords); it reads a single-quoted
/// string's text only for PREPARE … FROM and EXECUTE IMMEDIATE, which have no shape. So two
/// texts with one shape give [`classify`] token sequences that differ only in texts it never
/// reads, and it returns the same classes for both. Tokens are written with their kind and
/// length, so no two token sequences share a shape.
pub fn shape(sql: &str, mode: Mode) -> Option<String> {
    let mut out = String::with_capacity(sql.len() + 32);
    let mut literal_text = false;
    let l = lexer::lex_with(sql, base_options(mode), &mut |t: Token<'_>| {
        if t.is("PREPARE") || t.is("EXECUTE") {
            literal_text = true;
        }
        let (tag, text) = match t.kind {
            Kind::Number | Kind::String | Kind::Param => ('?', ""),
            Kind::Word => ('w', t.text),
            Kind::Quoted => ('q', t.text),
            Kind::DqString => ('d', t.text),
            Kind::Var => ('v', t.text),
            Kind::Punct => ('p', t.text),
            Kind::VersionedOpen | Kind::VersionedClose => ('!', t.text),
        };
        out.push(tag);
        if !text.is_empty() {
            push_len(&mut out, text.len());
            out.push(':');
            out.push_str(text);
        }
    })
    .ok()?;
    if literal_text || l.backslash || !l.versions.is_empty() || l.slash_comment {
        return None;
    }
    Some(out)
}

/// Writes `n` in decimal (without the allocation of `to_string`).
fn push_len(out: &mut String, n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[i..].iter().map(|&d| d as char));
}

/// The lexer options of the first reading in `mode`.
fn base_options(mode: Mode) -> Options {
    Options {
        slash_comments: mode == Mode::Vitess,
        ..Options::default()
    }
}

/// Classifies every statement of `sql`.
pub fn classify(sql: &str, mode: Mode) -> Result<Vec<Class>, ParseError> {
    classify_nested(sql, mode, 0)
}

fn classify_nested(sql: &str, mode: Mode, depth: usize) -> Result<Vec<Class>, ParseError> {
    if depth > MAX_NESTING {
        return Err(ParseError("prepared statements nest too deeply".into()));
    }
    let base = base_options(mode);
    let primary = lexer::lex(sql, base).map_err(|e| ParseError(e.to_string()))?;
    if mode == Mode::Secure && primary.backslash_after_high_byte {
        return Err(ParseError(
            "a backslash in a string follows a non-ASCII byte: under a multi-byte connection character set (GBK, SJIS, …) the server may read the string otherwise; escape quotes by doubling them".into(),
        ));
    }
    let mut out = reading(sql, &primary.tokens, mode, depth)?;
    if out.is_empty() {
        return Err(ParseError("the text holds no statement".into()));
    }
    for opts in other_readings(&primary, mode, base)? {
        // A reading that does not tokenize is one the server rejects too.
        let Ok(other) = lexer::lex(sql, opts) else {
            continue;
        };
        match reading(sql, &other.tokens, mode, depth) {
            Ok(classes) => out.extend(classes),
            Err(e) if mode == Mode::Secure => {
                return Err(ParseError(format!(
                    "{} (when read {})",
                    e.0.trim_start_matches("SQL cannot be parsed: "),
                    describe(opts)
                )))
            }
            Err(_) => {}
        }
    }
    Ok(out)
}

/// The other ways the server may read the text the lexer saw.
fn other_readings(
    l: &lexer::Lexed<'_>,
    mode: Mode,
    base: Options,
) -> Result<Vec<Options>, ParseError> {
    if !l.backslash && l.versions.is_empty() && !l.slash_comment {
        return Ok(Vec::new());
    }
    if l.versions.len() > MAX_VERSIONS && mode == Mode::Secure {
        return Err(ParseError(format!(
            "more than {MAX_VERSIONS} distinct versions in versioned comments"
        )));
    }
    let mut thresholds: Vec<Option<u32>> = vec![None];
    let mut versions = l.versions.clone();
    versions.sort_unstable();
    // A server of version v runs the versioned comments up to v: one reading below each.
    // Servers older than MySQL 5.7 (which Vitess does not support) are not considered;
    // MariaDB's `/*M!` (version 1 here) is skipped by MySQL.
    thresholds.extend(
        versions
            .iter()
            .filter(|&&v| v == 1 || v > OLDEST_SERVER)
            .map(|v| Some(v.saturating_sub(1))),
    );
    let escapes: &[bool] = if l.backslash { &[true, false] } else { &[true] };
    // Vitess's `//` comments: MySQL reads the text after them.
    let slashes: &[bool] = if l.slash_comment {
        &[true, false]
    } else {
        &[base.slash_comments]
    };
    let mut out = Vec::new();
    for &skip_versions_above in &thresholds {
        for &backslash_escapes in escapes {
            for &slash_comments in slashes {
                let o = Options {
                    backslash_escapes,
                    skip_versions_above,
                    slash_comments,
                };
                if o != base {
                    out.push(o);
                }
            }
        }
    }
    Ok(out)
}

fn describe(o: Options) -> String {
    let mut parts = Vec::new();
    if !o.backslash_escapes {
        parts.push("without backslash escapes (sql_mode NO_BACKSLASH_ESCAPES)".to_owned());
    }
    if let Some(v) = o.skip_versions_above {
        parts.push(format!("by a server of version {v}"));
    }
    parts.join(" and ")
}

/// Classifies the statements of one reading.
fn reading(
    sql: &str,
    tokens: &[Token<'_>],
    mode: Mode,
    depth: usize,
) -> Result<Vec<Class>, ParseError> {
    let owned;
    let toks = if tokens
        .iter()
        .any(|t| matches!(t.kind, Kind::VersionedOpen | Kind::VersionedClose))
    {
        owned = tokens
            .iter()
            .filter(|t| !matches!(t.kind, Kind::VersionedOpen | Kind::VersionedClose))
            .copied()
            .collect::<Vec<_>>();
        &owned[..]
    } else {
        tokens
    };
    // No statement at all (all of it in skipped comments): the server answers "Query was
    // empty" and runs nothing.
    let statements = extract::split(toks);
    let mut out = Vec::with_capacity(statements.len());
    let unreadable = |e: extract::Unreadable| ParseError(format!("{} (at byte {})", e.why, e.at));
    for s in statements {
        let mut x = extract::Extractor::new(s.tokens, mode, sql.len());
        let class = x.statement().map_err(unreadable)?;
        if s.program && mode == Mode::Vitess {
            // Vitess does not check a stored program; what may follow its true end is checked.
            out.extend(extract::inside_program(s.tokens, mode, sql.len()).map_err(unreadable)?);
        }
        match x.prepared.take() {
            Some(text) => out.push(merge(classify_nested(&text, mode, depth + 1)?)),
            None => out.push(class),
        }
    }
    Ok(out)
}

/// One class for several (a prepared string holding more than one statement): any denial
/// wins, then every need of every checked statement.
fn merge(classes: Vec<Class>) -> Class {
    let mut plan = None;
    let mut all = Vec::new();
    for c in classes {
        match c {
            Class::Denied { .. } => return c,
            Class::Checked { plan: p, needs } => {
                plan.get_or_insert(p);
                all.extend(needs);
            }
            Class::Unchecked { .. } => {}
        }
    }
    match plan {
        Some(plan) => Class::Checked { plan, needs: all },
        None => Class::Unchecked {
            kind: "session or metadata statement",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Role::*;

    fn needs(sql: &str, mode: Mode) -> Vec<(Role, String)> {
        let c = classify(sql, mode).unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.into_iter()
            .flat_map(|c| match c {
                Class::Checked { needs, .. } => needs,
                other => panic!("{sql}: expected a checked statement, got {other:?}"),
            })
            .collect()
    }

    fn n(v: &[(Role, &str)]) -> Vec<(Role, String)> {
        v.iter().map(|(r, t)| (*r, (*t).to_owned())).collect()
    }

    #[test]
    fn vitess_roles_per_statement() {
        use Mode::Secure as S;
        let cases: &[(&str, &[(Role, &str)])] = &[
            ("select * from t1", &[(Reader, "t1")]),
            (
                "select * from ks.t1 join `t2` on t1.a = t2.a",
                &[(Reader, "t1"), (Reader, "t2")],
            ),
            ("select * from (select * from t3) as d", &[(Reader, "t3")]),
            (
                "select * from t1 where a in (select b from t4)",
                &[(Reader, "t1"), (Reader, "t4")],
            ),
            (
                "select 1 from t1 union select 2 from t2",
                &[(Reader, "t1"), (Reader, "t2")],
            ),
            (
                "with c as (select * from t5) select * from c",
                &[(Reader, "t5")],
            ),
            ("insert into t1 values (1)", &[(Writer, "t1")]),
            (
                "insert into t1 select * from t2",
                &[(Reader, "t2"), (Writer, "t1")],
            ),
            ("replace into t1 values (1)", &[(Writer, "t1")]),
            ("update t1 set a = 1", &[(Writer, "t1")]),
            (
                "update t1 join t2 on t1.a = t2.a set t1.b = 1",
                &[(Writer, "t1"), (Writer, "t2")],
            ),
            (
                "update t1 set a = (select max(b) from t3)",
                &[(Reader, "t3"), (Writer, "t1")],
            ),
            ("delete from t1 where a = 1", &[(Writer, "t1")]),
            (
                "delete t1 from t1 join t2 on t1.a = t2.a",
                &[(Writer, "t1"), (Writer, "t2")],
            ),
            (
                "delete from t1 where a in (select a from t6)",
                &[(Reader, "t6"), (Writer, "t1")],
            ),
            ("create table t7 (a int)", &[(Admin, "t7")]),
            ("alter table t1 add column b int", &[(Admin, "t1")]),
            ("drop table t1, t2", &[(Admin, "t1"), (Admin, "t2")]),
            ("rename table t1 to t8", &[(Admin, "t1"), (Admin, "t8")]),
            ("truncate table t1", &[(Admin, "t1")]),
            (
                "create view v1 as select * from t1",
                &[(Reader, "t1"), (Admin, "v1")],
            ),
            ("/*!50000 delete from t9 */", &[(Writer, "t9")]),
            (
                "select 1 from t1 /*! ; delete from t9 */",
                &[(Reader, "t1"), (Writer, "t9")],
            ),
            (
                "select * from t1; insert into t2 values (1)",
                &[(Reader, "t1"), (Writer, "t2")],
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(needs(sql, S), n(want), "{sql}");
        }
    }

    #[test]
    fn unchecked_and_secure_mode_holes() {
        let one = |sql: &str, mode| {
            classify(sql, mode)
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .remove(0)
        };
        for sql in [
            "set autocommit = 1",
            "show tables",
            "begin",
            "commit",
            "rollback",
            "use ks",
        ] {
            assert!(
                matches!(one(sql, Mode::Secure), Class::Unchecked { .. }),
                "{sql}"
            );
        }
        // The parser reads only Hive's LOAD DATA INPATH; MySQL's INFILE form is recognized.
        let load = "load data local infile '/tmp/x' replace into table ks.`Secret` fields terminated by ';'";
        assert_eq!(
            one(load, Mode::Secure),
            Class::Checked {
                plan: "Load",
                needs: vec![(Role::Writer, "Secret".into())]
            }
        );
        assert!(matches!(one(load, Mode::Vitess), Class::Unchecked { .. }));
        assert!(matches!(
            one("call p()", Mode::Vitess),
            Class::Unchecked { kind: "CALL" }
        ));
        assert_eq!(
            one("call ks.p()", Mode::Secure),
            Class::Checked {
                plan: "Call",
                needs: vec![(Role::Writer, "call:p".into())]
            }
        );
        assert!(
            classify("selec * fron t", Mode::Secure).is_err(),
            "unparseable SQL is an error"
        );
    }

    #[test]
    fn statements_the_parser_cannot_read() {
        let secure =
            |sql: &str| merge(classify(sql, Mode::Secure).unwrap_or_else(|e| panic!("{sql}: {e}")));
        let reads = |t: &str| vec![(Role::Reader, t.to_owned())];
        let checked = |c: Class| match c {
            Class::Checked { needs, .. } => needs,
            other => panic!("{other:?}"),
        };
        assert_eq!(checked(secure("handler secret open as h")), reads("secret"));
        assert_eq!(
            checked(secure("HANDLER `secret` READ FIRST")),
            reads("secret")
        );
        assert!(matches!(
            secure("handler secret close"),
            Class::Unchecked { .. }
        ));
        assert_eq!(
            checked(secure("table ks.secret order by a limit 1")),
            reads("secret")
        );
        assert_eq!(
            checked(secure("do (select max(a) from secret)")),
            reads("secret")
        );
        assert_eq!(
            checked(secure("prepare s from 'delete from secret'")),
            vec![(Role::Writer, "secret".to_owned())]
        );
        assert_eq!(
            checked(secure("prepare s from 'select * from `it''s`'")),
            reads("it's"),
            "the literal is unescaped as MySQL does"
        );
        assert!(matches!(secure("prepare s from @q"), Class::Denied { .. }));
        assert!(matches!(
            secure("select * from t into outfile '/tmp/x'"),
            Class::Denied { .. }
        ));
        assert!(matches!(
            secure("select * into dumpfile '/tmp/x' from t"),
            Class::Denied { .. }
        ));
        assert_eq!(
            checked(secure("select a into @v from secret where b = 1")),
            reads("secret")
        );
        assert_eq!(
            checked(secure("select next 5 values from ks.seq")),
            vec![(Role::Writer, "seq".to_owned())]
        );
        // In a multi-statement string the other statements are still checked.
        let c = classify("handler secret open; delete from w1", Mode::Secure).expect("classified");
        assert_eq!(c.len(), 2);
        assert!(matches!(&c[1], Class::Checked { plan: "Delete", .. }));
        // A ';' inside a string or comment does not split.
        let c = classify("select ';' /* ; */ ; # ;\n do 1", Mode::Secure).expect("classified");
        assert_eq!(c.len(), 2, "{c:?}");
        // What nothing recognizes is the parser's error.
        assert!(classify("handler", Mode::Secure).is_err());
        assert!(classify("load data infile 'x'", Mode::Secure).is_err());
        assert!(classify("select 'open", Mode::Secure).is_err());
    }

    #[test]
    fn executable_comments_are_code_outside_strings_only() {
        let reads = |sql: &str| needs(sql, Mode::Secure);
        assert_eq!(reads("select 1 /*!50000 from t */"), n(&[(Reader, "t")]));
        assert_eq!(reads("select '/*! from t */'"), n(&[]));
        assert_eq!(reads("select 'it''s' /*! from t*/"), n(&[(Reader, "t")]));
        assert_eq!(reads("select \"é\" /* from t */"), n(&[]));
        assert_eq!(reads("select 1 /*M! from t */"), n(&[(Reader, "t")]));
    }
}
