//! The cross-check: the same (role, table) needs read from sqlparser's MySQL AST instead of
//! vtguard's extractor. Tests and the differential fuzz target compare the two on every
//! statement sqlparser can parse; it decides nothing in the agent.

use std::{collections::HashSet, ops::ControlFlow};

use sqlparser::{
    ast::{ObjectName, Query, Statement, TableFactor, TableObject, TableWithJoins, Visit, Visitor},
    dialect::MySqlDialect,
    parser::Parser,
};

use std::collections::BTreeSet;

use super::{classify, Class, Mode};
use crate::acl::tableacl::Role;

/// Relations in visit order, and CTE names (which are not tables).
#[derive(Default)]
struct Relations {
    all: Vec<String>,
    /// CTE names anywhere in the statement.
    pub ctes: HashSet<String>,
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

/// The needs of each statement of `sql` as sqlparser's AST gives them: `None` when sqlparser
/// cannot parse the text; per statement `None` for kinds the cross-check does not cover (only
/// SELECT, INSERT, REPLACE, UPDATE, DELETE and table DDL are compared). The second value is
/// every CTE name of the text (the AST does not scope them, so comparisons leave those names
/// out).
pub fn needs(sql: &str) -> Option<(Vec<Option<Needs>>, HashSet<String>)> {
    let statements = Parser::parse_sql(&MySqlDialect {}, sql).ok()?;
    let mut ctes = HashSet::new();
    let out = statements
        .iter()
        .map(|s| {
            let (n, c) = statement_needs(s);
            ctes.extend(c);
            n
        })
        .collect();
    Some((out, ctes))
}

/// The (role, table) pairs of one statement.
pub type Needs = Vec<(Role, String)>;

fn statement_needs(s: &Statement) -> (Option<Needs>, HashSet<String>) {
    let mut rel = Relations::default();
    let _ = s.visit(&mut rel);
    let mut tables: Vec<String> = rel
        .all
        .iter()
        .filter(|t| !rel.ctes.contains(*t))
        .cloned()
        .collect();
    // DELETE FROM t1, t2 USING …: t1 and t2 name the USING list's references, not tables.
    if let Statement::Delete(d) = s {
        if d.using.is_some() {
            let (sqlparser::ast::FromTable::WithFromKeyword(from)
            | sqlparser::ast::FromTable::WithoutKeyword(from)) = &d.from;
            let mut named = Vec::new();
            from.iter().for_each(|t| direct_tables(t, &mut named));
            for n in named {
                if let Some(i) = tables.iter().position(|t| *t == n) {
                    tables.remove(i);
                }
            }
        }
    }
    // `targets` need `role`; every other relation of the statement is read.
    let checked = |role: Role, targets: Vec<String>| {
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
        Some(needs)
    };
    let needs = match s {
        Statement::Query(q) if is_next_value(q) => checked(Role::Writer, tables.clone()),
        Statement::Query(_) => checked(Role::Reader, vec![]),
        Statement::Insert(i) => {
            let target = match &i.table {
                TableObject::TableName(n) => vec![unqualified(n)],
                _ => vec![],
            };
            checked(Role::Writer, target)
        }
        Statement::Update(u) => {
            let mut targets = Vec::new();
            direct_tables(&u.table, &mut targets);
            checked(Role::Writer, targets)
        }
        Statement::Delete(d) => {
            let mut targets = Vec::new();
            let from = match &d.from {
                sqlparser::ast::FromTable::WithFromKeyword(f)
                | sqlparser::ast::FromTable::WithoutKeyword(f) => f,
            };
            match &d.using {
                // DELETE FROM t1, t2 USING <references>: t1 and t2 name references (often by
                // alias); the references are the tables.
                Some(using) => using.iter().for_each(|t| direct_tables(t, &mut targets)),
                None => from.iter().for_each(|t| direct_tables(t, &mut targets)),
            }
            checked(Role::Writer, targets)
        }
        Statement::CreateTable(_)
        | Statement::AlterTable(_)
        | Statement::CreateView(_)
        | Statement::AlterView(_)
        | Statement::CreateIndex(_)
        | Statement::RenameTable(_)
        | Statement::Truncate(_) => checked(Role::Admin, ddl_names(s)),
        // DROP TABLE|VIEW|INDEX; DROP DATABASE and the others name no table.
        Statement::Drop {
            object_type:
                sqlparser::ast::ObjectType::Table
                | sqlparser::ast::ObjectType::View
                | sqlparser::ast::ObjectType::Index,
            ..
        } => checked(Role::Admin, ddl_names(s)),
        _ => None,
    };
    (needs, rel.ctes)
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
        Statement::CreateTable(c) => {
            let mut out = vec![unqualified(&c.name)];
            if let Some(like) = &c.like {
                let (sqlparser::ast::CreateTableLikeKind::Parenthesized(l)
                | sqlparser::ast::CreateTableLikeKind::Plain(l)) = like;
                out.push(unqualified(&l.name));
            }
            out.extend(references(s));
            out
        }
        Statement::AlterTable(a) => {
            let mut out = vec![unqualified(&a.name)];
            for op in &a.operations {
                if let sqlparser::ast::AlterTableOperation::RenameTable { table_name } = op {
                    let (sqlparser::ast::RenameTableNameKind::As(n)
                    | sqlparser::ast::RenameTableNameKind::To(n)) = table_name;
                    out.push(unqualified(n));
                }
            }
            out.extend(references(s));
            out
        }
        Statement::Drop {
            table: Some(t),
            object_type: sqlparser::ast::ObjectType::Index,
            ..
        } => vec![unqualified(t)],
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

/// The parent tables of foreign keys (`REFERENCES parent`), read from the statement's
/// canonical text: the AST keeps them in constraints that the visitor does not reach.
fn references(s: &Statement) -> Vec<String> {
    let text = s.to_string();
    // The canonical text with the content of '…' strings blanked, so that a string holding
    // "REFERENCES x" is not read as a foreign key.
    let mut code = String::with_capacity(text.len());
    let mut in_string = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            if c == '\\' {
                chars.next();
            } else if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                } else {
                    in_string = false;
                }
            }
            code.push(' ');
            continue;
        }
        if c == '\'' {
            in_string = true;
        }
        code.push(c);
    }
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("REFERENCES ") {
        rest = &rest[i + "REFERENCES ".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '(')
            .collect();
        let last = name.rsplit('.').next().unwrap_or_default();
        out.push(last.trim_matches('`').replace("``", "`"));
    }
    out
}

/// How [`differential`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// Each statement the AST covers: the same (role, table) pairs (the corpus test).
    Exact,
    /// Every (role, table) pair the AST gives for the text is one the extractor gives too: no
    /// table missed, no role weakened (the fuzz target: sqlparser reads more than MySQL does,
    /// e.g. reserved words as column names, so it may see fewer tables than the server).
    NoneMissed,
}

/// The differential check: for a text sqlparser parses and the extractor reads, compares the
/// (role, table) pairs of the statements sqlparser's AST covers with the extractor's. `Err`
/// holds the difference. CTE names are left out of both sides (the AST does not scope them),
/// and `dual` in any case.
pub fn differential(sql: &str, compare: Compare) -> Result<(), String> {
    // sqlparser splits tokens at any Unicode white space; MySQL reads non-ASCII characters as
    // part of names.
    if sql.chars().any(|c| !c.is_ascii() && c.is_whitespace()) {
        return Ok(());
    }
    let Some((reference, ctes)) = needs(sql) else {
        return Ok(());
    };
    // Secure mode: the same needs as vitess mode for the statements compared, without Vitess's
    // `//` comments and with every other reading required to read.
    let Ok(ours) = classify(sql, Mode::Secure) else {
        // Unreadable: denied, which is safe; sqlparser accepts more than MySQL does.
        return Ok(());
    };
    if ours.iter().any(|c| matches!(c, Class::Denied { .. })) {
        return Ok(());
    }
    // sqlparser reads UPDATE's and DELETE's modifiers (IGNORE, LOW_PRIORITY, QUICK) as a
    // table name followed by an alias.
    let modifier = |t: &String| {
        ["ignore", "low_priority", "quick"]
            .iter()
            .any(|m| t.eq_ignore_ascii_case(m))
    };
    if reference
        .iter()
        .flatten()
        .flatten()
        .any(|(_, t)| modifier(t))
    {
        return Ok(());
    }
    let keep = |v: &Vec<(Role, String)>| -> BTreeSet<(Role, String)> {
        v.iter()
            .filter(|(_, t)| !ctes.contains(t) && !t.eq_ignore_ascii_case("dual"))
            .cloned()
            .collect()
    };
    match compare {
        Compare::Exact => {
            // Other readings (backslashes, versioned comments) come after the first one.
            let readings = sql.contains('\\') || sql.contains("/*!") || sql.contains("/*M!");
            if reference.len() > ours.len() || (reference.len() < ours.len() && !readings) {
                return Err(format!(
                    "sqlparser reads {} statements, the extractor {}",
                    reference.len(),
                    ours.len()
                ));
            }
            for (r, o) in reference.iter().zip(&ours) {
                if let (Some(r), Class::Checked { needs, .. }) = (r, o) {
                    let (r, o) = (keep(r), keep(needs));
                    if r != o {
                        return Err(format!("sqlparser: {r:?}\nextractor: {o:?}"));
                    }
                }
            }
        }
        Compare::NoneMissed => {
            let r: BTreeSet<_> = reference.iter().flatten().flat_map(keep).collect();
            let o: BTreeSet<_> = ours
                .iter()
                .flat_map(|c| match c {
                    Class::Checked { needs, .. } => keep(needs),
                    _ => BTreeSet::new(),
                })
                .collect();
            let missed: Vec<_> = r.difference(&o).collect();
            if !missed.is_empty() {
                return Err(format!(
                    "the extractor misses {missed:?}\nsqlparser: {r:?}\nextractor: {o:?}"
                ));
            }
        }
    }
    Ok(())
}
