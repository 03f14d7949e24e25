//! SQL → the (role, table) pairs a statement needs, per VITESS.md §3, with a MySQL-dialect
//! parser. Every statement of a multi-statement string is classified; MySQL executable
//! comments (`/*! … */`, `/*!50000 … */`) are unwrapped first, since MySQL runs their content.
//!
//! Statements the parser cannot read but MySQL runs (LOAD DATA, HANDLER, `TABLE t`,
//! PREPARE … FROM, DO, SELECT … INTO, SELECT NEXT n VALUES) are recognized from their leading
//! words by a small quote- and comment-aware lexer ([`special`]); anything else the parser
//! cannot read is an error, which the caller denies with the parser's message.

use std::{collections::HashSet, ops::ControlFlow};

use sqlparser::{
    ast::{ObjectName, Query, Statement, TableFactor, TableObject, TableWithJoins, Visit, Visitor},
    dialect::MySqlDialect,
    parser::Parser,
};

use super::tableacl::Role;

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
    /// Refused outright (secure mode), with the reason.
    Denied { reason: String },
}

/// Why SQL could not be classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SQL cannot be parsed: {0}")]
pub struct ParseError(pub String);

/// MySQL runs the content of `/*! … */` and `/*!NNNNN … */`: make it plain SQL. Quotes are
/// respected, so a string holding "/*!" is left alone.
pub fn unwrap_executable_comments(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let mut quote: Option<u8> = None;
    let mut in_exec = false;
    while i < b.len() {
        let c = b[i];
        if let Some(q) = quote {
            if c == b'\\' && q != b'`' && i + 1 < b.len() {
                out.push_str(&sql[i..i + 2]);
                i += 2;
                continue;
            }
            if c == q {
                quote = None;
            }
            let ch = sql[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
            continue;
        }
        if c == b'\'' || c == b'"' || c == b'`' {
            quote = Some(c);
            out.push(c as char);
            i += 1;
            continue;
        }
        if !in_exec && sql[i..].starts_with("/*!") {
            i += 3;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            out.push(' ');
            in_exec = true;
            continue;
        }
        if in_exec && sql[i..].starts_with("*/") {
            i += 2;
            out.push(' ');
            in_exec = false;
            continue;
        }
        let ch = sql[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Relations in visit order, and CTE names (which are not tables).
#[derive(Default)]
struct Relations {
    all: Vec<String>,
    ctes: HashSet<String>,
}

impl Visitor for Relations {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.ctes.insert(cte.alias.name.value.clone());
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
        self.all.push(unqualified(r));
        ControlFlow::Continue(())
    }
}

/// The table name without keyspace qualifier (Vitess compares unqualified names).
fn unqualified(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.clone())
        .unwrap_or_else(|| name.to_string())
}

/// Tables named directly in a FROM/table list (not inside derived tables).
fn direct_tables(t: &TableWithJoins, out: &mut Vec<String>) {
    factor_tables(&t.relation, out);
    for j in &t.joins {
        factor_tables(&j.relation, out);
    }
}

fn factor_tables(f: &TableFactor, out: &mut Vec<String>) {
    match f {
        TableFactor::Table { name, .. } => out.push(unqualified(name)),
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => direct_tables(table_with_joins, out),
        _ => {}
    }
}

/// Classifies every statement of `sql`.
pub fn classify(sql: &str, mode: Mode) -> Result<Vec<Class>, ParseError> {
    let plain = unwrap_executable_comments(sql);
    match Parser::parse_sql(&MySqlDialect {}, &plain) {
        Ok(statements) => Ok(statements.iter().map(|s| classify_one(s, mode)).collect()),
        // Slow path: one statement at a time, so that a statement only the recognizers know
        // does not hide the others.
        Err(whole) => {
            let mut out = Vec::new();
            for piece in split_statements(&plain) {
                match Parser::parse_sql(&MySqlDialect {}, piece) {
                    Ok(st) => out.extend(st.iter().map(|s| classify_one(s, mode))),
                    Err(e) => match special(piece, mode) {
                        Some(c) => out.push(c?),
                        None => return Err(ParseError(e.to_string())),
                    },
                }
            }
            if out.is_empty() {
                return Err(ParseError(whole.to_string()));
            }
            Ok(out)
        }
    }
}

/// A top-level lexeme of MySQL text: enough to recognize statements by their leading words.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lex {
    /// A bare word (keyword, name or number), as written.
    Word(String),
    /// A backticked identifier, unescaped.
    Quoted(String),
    /// A '…' or "…" string, unescaped.
    Str(String),
    /// `@name`, `@@name`, `@'name'`.
    Var,
    Punct(char),
}

/// Lexes `text` into (byte range, lexeme), skipping whitespace and comments. `None` when a
/// quote or comment is left open.
fn lex(text: &str) -> Option<Vec<(std::ops::Range<usize>, Lex)>> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    // Reads a quoted run starting at the quote `b[i]`; returns (end, unescaped).
    let quoted = |mut i: usize| -> Option<(usize, String)> {
        let q = b[i];
        let mut v = Vec::new();
        i += 1;
        loop {
            let c = *b.get(i)?;
            if c == b'\\' && q != b'`' {
                v.push(*b.get(i + 1)?);
                i += 2;
            } else if c == q {
                if b.get(i + 1) == Some(&q) {
                    v.push(q);
                    i += 2;
                } else {
                    return Some((i + 1, String::from_utf8_lossy(&v).into_owned()));
                }
            } else {
                v.push(c);
                i += 1;
            }
        }
    };
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'#'
            || (text[i..].starts_with("--") && b.get(i + 2).is_none_or(|n| n.is_ascii_whitespace()))
        {
            i = text[i..].find('\n').map_or(b.len(), |n| i + n + 1);
        } else if text[i..].starts_with("/*") {
            i = i + 2 + text[i + 2..].find("*/")? + 2;
        } else if c == b'\'' || c == b'"' {
            let (end, v) = quoted(i)?;
            out.push((start..end, Lex::Str(v)));
            i = end;
        } else if c == b'`' {
            let (end, v) = quoted(i)?;
            out.push((start..end, Lex::Quoted(v)));
            i = end;
        } else if c == b'@' {
            i += 1;
            while b.get(i) == Some(&b'@') {
                i += 1;
            }
            match b.get(i) {
                Some(q @ (b'\'' | b'"' | b'`')) if *q != 0 => i = quoted(i)?.0,
                _ => {
                    while i < b.len() && (b[i].is_ascii_alphanumeric() || b"_$.".contains(&b[i])) {
                        i += 1;
                    }
                }
            }
            out.push((start..i, Lex::Var));
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80 {
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80)
            {
                i += 1;
            }
            out.push((start..i, Lex::Word(text[start..i].to_owned())));
        } else {
            let ch = text[i..].chars().next()?;
            i += ch.len_utf8();
            out.push((start..i, Lex::Punct(ch)));
        }
    }
    Some(out)
}

/// Splits `text` at top-level `;` (not inside quotes or comments); empty pieces are dropped.
/// Text the lexer cannot read stays one piece (the parser then reports it).
fn split_statements(text: &str) -> Vec<&str> {
    let Some(lexemes) = lex(text) else {
        return vec![text];
    };
    let mut out = Vec::new();
    let mut from = 0;
    let mut words = false;
    for (range, l) in &lexemes {
        if *l == Lex::Punct(';') {
            if words {
                out.push(&text[from..range.start]);
            }
            from = range.end;
            words = false;
        } else {
            words = true;
        }
    }
    if words {
        out.push(&text[from..]);
    }
    out
}

type Lexemes = [(std::ops::Range<usize>, Lex)];

/// Whether lexeme `i` is the keyword `kw`.
fn is_kw(lx: &Lexemes, i: usize, kw: &str) -> bool {
    matches!(lx.get(i), Some((_, Lex::Word(w))) if w.eq_ignore_ascii_case(kw))
}

/// A possibly qualified name at `lx[i..]` (`t`, `ks.t`, `` `ks`.`t` ``): the unqualified
/// name and the index after it.
fn name_at(lx: &Lexemes, mut i: usize) -> Option<(String, usize)> {
    loop {
        let part = match &lx.get(i)?.1 {
            Lex::Word(v) | Lex::Quoted(v) => v.clone(),
            _ => return None,
        };
        i += 1;
        if lx.get(i).map(|x| &x.1) == Some(&Lex::Punct('.')) {
            i += 1;
            continue;
        }
        return Some((part, i));
    }
}

/// The index of the first top-level (outside parentheses) keyword among `kws` at or after `i`.
fn find_kw(lx: &Lexemes, i: usize, kws: &[&str]) -> Option<usize> {
    let mut depth = 0i32;
    for (j, (_, l)) in lx.iter().enumerate().skip(i) {
        match l {
            Lex::Punct('(') => depth += 1,
            Lex::Punct(')') => depth -= 1,
            Lex::Word(w) if depth == 0 && kws.iter().any(|k| w.eq_ignore_ascii_case(k)) => {
                return Some(j)
            }
            _ => {}
        }
    }
    None
}

/// Parses `text` (a rewrite of a statement) and classifies it; `None` if it does not parse.
fn reparse(text: &str, mode: Mode) -> Option<Result<Class, ParseError>> {
    let st = Parser::parse_sql(&MySqlDialect {}, text).ok()?;
    Some(Ok(merge(
        st.iter().map(|s| classify_one(s, mode)).collect(),
    )))
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

/// The SQL inside a prepared or immediately executed string: a literal is classified as if
/// sent directly; anything else cannot be seen, so secure mode denies it.
fn prepared(literal: Option<&str>, what: &str, mode: Mode) -> Result<Class, ParseError> {
    match (mode, literal) {
        (Mode::Vitess, _) => Ok(Class::Unchecked { kind: "PREPARE" }),
        (Mode::Secure, Some(sql)) => Ok(merge(classify(sql, mode)?)),
        (Mode::Secure, None) => Ok(Class::Denied {
            reason: format!("{what} of text that is not a string literal: the statement cannot be checked; use a literal"),
        }),
    }
}

/// Recognizes a statement the parser cannot read by its leading words. `None`: not one of
/// these (the caller denies it with the parser's message).
fn special(piece: &str, mode: Mode) -> Option<Result<Class, ParseError>> {
    let lx = lex(piece)?;
    let kw = |i: usize, k: &str| is_kw(&lx, i, k);
    let secure = mode == Mode::Secure;
    // LOAD DATA|XML … INTO TABLE t: writes t.
    if kw(0, "LOAD") && (kw(1, "DATA") || kw(1, "XML")) {
        let into = find_kw(&lx, 2, &["INTO"])?;
        if !kw(into + 1, "TABLE") {
            return None;
        }
        let (table, _) = name_at(&lx, into + 2)?;
        return Some(Ok(if secure {
            Class::Checked {
                plan: "Load",
                needs: vec![(Role::Writer, table)],
            }
        } else {
            Class::Unchecked { kind: "LOAD DATA" }
        }));
    }
    // HANDLER t OPEN | READ …: reads t. HANDLER t CLOSE releases it.
    if kw(0, "HANDLER") {
        let (table, next) = name_at(&lx, 1)?;
        if !secure || kw(next, "CLOSE") {
            return Some(Ok(Class::Unchecked { kind: "HANDLER" }));
        }
        if !(kw(next, "OPEN") || kw(next, "READ")) {
            return None;
        }
        return Some(Ok(Class::Checked {
            plan: "Handler",
            needs: vec![(Role::Reader, table)],
        }));
    }
    // TABLE t [ORDER BY …] [LIMIT …] is SELECT * FROM t.
    if kw(0, "TABLE") {
        let r = &lx[0].0;
        return reparse(
            &format!("{}SELECT * FROM{}", &piece[..r.start], &piece[r.end..]),
            mode,
        );
    }
    // DO expr, …: evaluates expressions, which may read tables through subqueries.
    if kw(0, "DO") {
        if !secure {
            return Some(Ok(Class::Unchecked { kind: "DO" }));
        }
        let r = &lx[0].0;
        return reparse(
            &format!("{}SELECT{}", &piece[..r.start], &piece[r.end..]),
            mode,
        );
    }
    // PREPARE s FROM 'sql' | @var.
    if kw(0, "PREPARE") && kw(2, "FROM") {
        let literal = match (&lx.get(3)?.1, lx.len()) {
            (Lex::Str(sql), 4) => Some(sql.as_str()),
            _ => None,
        };
        return Some(prepared(literal, "PREPARE", mode));
    }
    // SELECT NEXT n VALUES FROM seq: advances the sequence (WRITER).
    if kw(0, "SELECT") && kw(1, "NEXT") && kw(3, "VALUES") && kw(4, "FROM") {
        let (seq, end) = name_at(&lx, 5)?;
        if end != lx.len() {
            return None;
        }
        return Some(Ok(Class::Checked {
            plan: "Select",
            needs: vec![(Role::Writer, seq)],
        }));
    }
    // SELECT … INTO OUTFILE|DUMPFILE|@vars: the INTO part aside, a SELECT.
    if kw(0, "SELECT") || kw(0, "WITH") || lx.first().map(|x| &x.1) == Some(&Lex::Punct('(')) {
        let into = find_kw(&lx, 1, &["INTO"])?;
        let file = kw(into + 1, "OUTFILE") || kw(into + 1, "DUMPFILE");
        if file && secure {
            return Some(Ok(Class::Denied {
                reason: "SELECT … INTO OUTFILE/DUMPFILE writes a file on the database server"
                    .into(),
            }));
        }
        let end = find_kw(
            &lx,
            into + 1,
            &[
                "FROM", "WHERE", "GROUP", "HAVING", "ORDER", "LIMIT", "FOR", "LOCK", "UNION",
                "WINDOW",
            ],
        )
        .map_or(piece.len(), |j| lx[j].0.start);
        let start = lx[into].0.start;
        return reparse(&format!("{} {}", &piece[..start], &piece[end..]), mode);
    }
    None
}

fn classify_one(s: &Statement, mode: Mode) -> Class {
    let mut rel = Relations::default();
    let _ = s.visit(&mut rel);
    let tables: Vec<String> = rel
        .all
        .iter()
        .filter(|t| !rel.ctes.contains(*t))
        .cloned()
        .collect();
    // `targets` need `role`; every other relation of the statement is read.
    let checked = |plan: &'static str, role: Role, targets: Vec<String>| {
        let mut readers = tables.clone();
        let mut needs: Vec<(Role, String)> = Vec::new();
        for t in targets {
            if let Some(i) = readers.iter().position(|r| *r == t) {
                readers.remove(i);
            }
            needs.push((role, t));
        }
        needs.extend(readers.into_iter().map(|t| (Role::Reader, t)));
        needs.sort();
        needs.dedup();
        Class::Checked { plan, needs }
    };
    match s {
        // SELECT NEXT VALUE FROM seq advances a sequence: WRITER (the parser reads it as a
        // column `next` aliased `value`).
        Statement::Query(q) if is_next_value(q) => checked("Select", Role::Writer, tables.clone()),
        Statement::Query(_) => checked("Select", Role::Reader, vec![]),
        Statement::Insert(i) => {
            let target = match &i.table {
                TableObject::TableName(n) => vec![unqualified(n)],
                _ => vec![],
            };
            checked(
                if i.replace_into { "Replace" } else { "Insert" },
                Role::Writer,
                target,
            )
        }
        Statement::Update(u) => {
            let mut targets = Vec::new();
            direct_tables(&u.table, &mut targets);
            checked("Update", Role::Writer, targets)
        }
        Statement::Delete(d) => {
            let mut targets = Vec::new();
            let from = match &d.from {
                sqlparser::ast::FromTable::WithFromKeyword(f)
                | sqlparser::ast::FromTable::WithoutKeyword(f) => f,
            };
            for t in from {
                direct_tables(t, &mut targets);
            }
            for t in d.using.iter().flatten() {
                direct_tables(t, &mut targets);
            }
            checked("Delete", Role::Writer, targets)
        }
        Statement::CreateTable(_)
        | Statement::AlterTable(_)
        | Statement::Drop { .. }
        | Statement::CreateView(_)
        | Statement::AlterView(_)
        | Statement::CreateIndex(_)
        | Statement::RenameTable(_)
        | Statement::Truncate(_) => {
            // Every table the DDL names (RENAME: both names) needs ADMIN; a view's query is read.
            checked("DDL", Role::Admin, ddl_names(s))
        }
        Statement::Flush { tables: names, .. } if !names.is_empty() => Class::Checked {
            plan: "Flush",
            needs: names
                .iter()
                .map(|n| (Role::Admin, unqualified(n)))
                .collect(),
        },
        Statement::Analyze(_) => checked("Analyze", Role::Writer, tables.clone()),
        Statement::LoadData { table_name, .. } => match mode {
            Mode::Vitess => Class::Unchecked { kind: "LOAD DATA" },
            Mode::Secure => Class::Checked {
                plan: "Load",
                needs: vec![(Role::Writer, unqualified(table_name))],
            },
        },
        // EXECUTE s runs a statement checked when it was prepared. EXECUTE IMMEDIATE 'sql'
        // (MariaDB) runs text; the parser reads it as EXECUTE named `immediate` with
        // parameters, which MySQL's EXECUTE never has (it takes USING), so any parameter
        // list is read as text to run.
        Statement::Execute {
            immediate,
            parameters,
            ..
        } if *immediate || !parameters.is_empty() => {
            let literal = match parameters.as_slice() {
                [sqlparser::ast::Expr::Value(v)] => match &v.value {
                    sqlparser::ast::Value::SingleQuotedString(s)
                    | sqlparser::ast::Value::DoubleQuotedString(s) => Some(s.as_str()),
                    _ => None,
                },
                _ => None,
            };
            prepared(literal, "EXECUTE IMMEDIATE", mode).unwrap_or_else(|e| Class::Denied {
                reason: e.to_string(),
            })
        }
        Statement::Execute { .. } | Statement::Deallocate { .. } => Class::Unchecked {
            kind: "EXECUTE of a prepared statement",
        },
        Statement::Prepare { statement, .. } => match mode {
            Mode::Vitess => Class::Unchecked { kind: "PREPARE" },
            Mode::Secure => classify_one(statement, mode),
        },
        // CALL runs stored code that table ACLs cannot see: secure mode lets it through only
        // where the policy grants WRITER on the entry `call:<procedure>` explicitly.
        Statement::Call(f) => match mode {
            Mode::Vitess => Class::Unchecked { kind: "CALL" },
            Mode::Secure => Class::Checked {
                plan: "Call",
                needs: vec![(Role::Writer, format!("call:{}", unqualified(&f.name)))],
            },
        },
        Statement::Set(_)
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowProcessList { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowCharset(_)
        | Statement::ShowObjects(_)
        | Statement::ShowViews { .. }
        | Statement::ShowCollation { .. }
        | Statement::Kill { .. }
        | Statement::UnlockTables
        | Statement::Explain { .. }
        | Statement::ExplainTable { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Use(_) => Class::Unchecked {
            kind: "session or metadata statement",
        },
        _ => match mode {
            Mode::Vitess => Class::Unchecked { kind: "other" },
            Mode::Secure => Class::Denied {
                reason: format!(
                    "vtguard does not check this kind of statement ({})",
                    kind_name(s)
                ),
            },
        },
    }
}

/// `SELECT NEXT VALUE FROM …`, as the parser reads it (`SELECT next AS value FROM …`).
fn is_next_value(q: &Query) -> bool {
    use sqlparser::ast::{Expr, SelectItem, SetExpr};
    let SetExpr::Select(sel) = q.body.as_ref() else {
        return false;
    };
    matches!(
        sel.projection.as_slice(),
        [SelectItem::ExprWithAlias { expr: Expr::Identifier(next), alias }]
            if next.quote_style.is_none()
                && alias.quote_style.is_none()
                && next.value.eq_ignore_ascii_case("next")
                && alias.value.eq_ignore_ascii_case("value")
    )
}

/// The tables a DDL statement names.
fn ddl_names(s: &Statement) -> Vec<String> {
    match s {
        Statement::CreateTable(c) => vec![unqualified(&c.name)],
        Statement::AlterTable(a) => vec![unqualified(&a.name)],
        Statement::Drop { names, .. } => names.iter().map(unqualified).collect(),
        Statement::CreateView(v) => vec![unqualified(&v.name)],
        Statement::AlterView(v) => vec![unqualified(&v.name)],
        Statement::CreateIndex(i) => vec![unqualified(&i.table_name)],
        Statement::RenameTable(r) => r
            .iter()
            .flat_map(|x| [unqualified(&x.old_name), unqualified(&x.new_name)])
            .collect(),
        Statement::Truncate(t) => t.table_names.iter().map(|n| unqualified(&n.name)).collect(),
        _ => vec![],
    }
}

fn kind_name(s: &Statement) -> String {
    let text = s.to_string();
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
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
        assert_eq!(
            split_statements("select ';' /* ; */ ; # ;\n do 1"),
            vec!["select ';' /* ; */ ", " # ;\n do 1"]
        );
        // What nothing recognizes is the parser's error.
        assert!(classify("handler", Mode::Secure).is_err());
        assert!(classify("load data infile 'x'", Mode::Secure).is_err());
        assert!(classify("select 'open", Mode::Secure).is_err());
    }

    #[test]
    fn executable_comments_unwrap_outside_strings_only() {
        assert_eq!(
            unwrap_executable_comments("select 1 /*!50000 from t */"),
            "select 1   from t  "
        );
        assert_eq!(
            unwrap_executable_comments("select '/*! x */'"),
            "select '/*! x */'"
        );
        assert_eq!(
            unwrap_executable_comments("select 'it''s' /*!x*/"),
            "select 'it''s'  x "
        );
        assert_eq!(
            unwrap_executable_comments("select \"é\" /* plain */"),
            "select \"é\" /* plain */"
        );
    }
}
