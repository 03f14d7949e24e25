//! The table-reference extractor: MySQL's grammar reduced to what table ACLs need — which
//! tables a statement names, and in which role — walked over the tokens of [`super::lexer`].
//!
//! It is not a full parser. It knows every place where MySQL's grammar puts a table name
//! (FROM and JOIN lists, UPDATE and DELETE table lists, INSERT/REPLACE targets, `TABLE t`, DDL
//! names, REFERENCES, RENAME … TO, EXCHANGE … WITH TABLE, MERGE's UNION=(…), LOAD DATA,
//! HANDLER, LOCK TABLES, FLUSH, ANALYZE, SHOW … FROM t, DESCRIBE t …) and treats every
//! parenthesis that starts with SELECT, WITH, VALUES or TABLE as a subquery, wherever it
//! appears. Expressions are skipped token by token, so it accepts any expression syntax
//! (functions, operators, JSON, intervals, casts) without knowing it.
//!
//! It fails closed: where a table name is due and something else is there, or after a table
//! reference something comes that MySQL's grammar does not allow, the statement is
//! unreadable, not guessed.

use super::{
    lexer::{Kind, Token},
    Class, Mode,
};
use crate::acl::tableacl::Role;

/// Why a statement cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub why: &'static str,
    /// Byte offset in the statement text.
    pub at: usize,
}

type Result<T> = std::result::Result<T, Unreadable>;

/// MySQL 8.0's reserved words that can follow a table reference, plus those Vitess and MariaDB
/// put there: a bare word that is one of these is never read as a table alias.
const RESERVED: &[&str] = &[
    "ACCESSIBLE",
    "ADD",
    "ALL",
    "ALTER",
    "ANALYZE",
    "AND",
    "AS",
    "ASC",
    "BEFORE",
    "BETWEEN",
    "BY",
    "CALL",
    "CASCADE",
    "CASE",
    "CHANGE",
    "CHECK",
    "COLLATE",
    "COLUMN",
    "CONDITION",
    "CONSTRAINT",
    "CONTINUE",
    "CONVERT",
    "CREATE",
    "CROSS",
    "CURRENT_DATE",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "CURRENT_USER",
    "CURSOR",
    "DATABASE",
    "DATABASES",
    "DECLARE",
    "DEFAULT",
    "DELAYED",
    "DELETE",
    "DESC",
    "DESCRIBE",
    "DISTINCT",
    "DISTINCTROW",
    "DIV",
    "DROP",
    "DUAL",
    "EACH",
    "ELSE",
    "ELSEIF",
    "ENCLOSED",
    "ESCAPED",
    "EXCEPT",
    "EXISTS",
    "EXIT",
    "EXPLAIN",
    "FALSE",
    "FETCH",
    "FOR",
    "FORCE",
    "FOREIGN",
    "FROM",
    "FULLTEXT",
    "FUNCTION",
    "GENERATED",
    "GET",
    "GRANT",
    "GROUP",
    "GROUPING",
    "GROUPS",
    "HAVING",
    "HIGH_PRIORITY",
    "IF",
    "IGNORE",
    "IN",
    "INDEX",
    "INFILE",
    "INNER",
    "INOUT",
    "INSERT",
    "INTERSECT",
    "INTERVAL",
    "INTO",
    "IS",
    "ITERATE",
    "JOIN",
    "JSON_TABLE",
    "KEY",
    "KEYS",
    "KILL",
    "LATERAL",
    "LEADING",
    "LEAVE",
    "LEFT",
    "LIKE",
    "LIMIT",
    "LINEAR",
    "LINES",
    "LOAD",
    "LOCK",
    "LOOP",
    "LOW_PRIORITY",
    "MATCH",
    "MOD",
    "NATURAL",
    "NOT",
    "NO_WRITE_TO_BINLOG",
    "NULL",
    "OF",
    "ON",
    "OPTIMIZE",
    "OPTION",
    "OPTIONALLY",
    "OR",
    "ORDER",
    "OUT",
    "OUTER",
    "OUTFILE",
    "OVER",
    "PARTITION",
    "PRIMARY",
    "PROCEDURE",
    "PURGE",
    "RANGE",
    "READ",
    "RECURSIVE",
    "REFERENCES",
    "REGEXP",
    "RELEASE",
    "RENAME",
    "REPEAT",
    "REPLACE",
    "REQUIRE",
    "RESIGNAL",
    "RESTRICT",
    "RETURN",
    "RETURNING",
    "REVOKE",
    "RIGHT",
    "RLIKE",
    "ROW",
    "ROWS",
    "SCHEMA",
    "SCHEMAS",
    "SELECT",
    "SEPARATOR",
    "SET",
    "SHOW",
    "SIGNAL",
    "SPATIAL",
    "SQL",
    "STARTING",
    "STRAIGHT_JOIN",
    "TABLE",
    "TERMINATED",
    "THEN",
    "TO",
    "TRAILING",
    "TRIGGER",
    "TRUE",
    "UNDO",
    "UNION",
    "UNIQUE",
    "UNLOCK",
    "UPDATE",
    "USAGE",
    "USE",
    "USING",
    "VALUES",
    "WHEN",
    "WHERE",
    "WHILE",
    "WINDOW",
    "WITH",
    "WRITE",
    "XOR",
];

fn reserved(t: &Token<'_>) -> bool {
    t.kind == Kind::Word && RESERVED.iter().any(|r| t.text.eq_ignore_ascii_case(r))
}

/// Words that end a table list (the clauses after FROM, and statement parts after UPDATE's
/// and DELETE's table lists).
const LIST_END: &[&str] = &[
    "WHERE",
    "GROUP",
    "HAVING",
    "ORDER",
    "LIMIT",
    "WINDOW",
    "INTO",
    "SET",
    "UNION",
    "EXCEPT",
    "INTERSECT",
    "FOR",
    "LOCK",
    "PROCEDURE",
    "RETURNING",
    "VALUES",
    "VALUE",
    "SELECT",
    "WITH",
    "TABLE",
];

/// Words that may follow a table reference, besides LIST_END.
const AFTER_FACTOR: &[&str] = &[
    "JOIN",
    "INNER",
    "CROSS",
    "LEFT",
    "RIGHT",
    "NATURAL",
    "STRAIGHT_JOIN",
    "FULL",
    "OUTER",
    "ON",
    "USING",
];

fn is_any(t: &Token<'_>, words: &[&str]) -> bool {
    t.kind == Kind::Word && words.iter().any(|w| t.text.eq_ignore_ascii_case(w))
}

/// How a region of tokens is read.
#[derive(Debug, Clone, Copy)]
struct State {
    /// Inside a table list: the role of the tables it names directly.
    list: Option<Role>,
    /// The next token is a table reference.
    expect: bool,
    /// A query (FROM introduces tables); false in expressions such as `EXTRACT(YEAR FROM d)`.
    query: bool,
    /// The role of the tables named by `TABLE t` and by DDL references (REFERENCES …).
    ddl: bool,
}

impl State {
    fn query() -> Self {
        State {
            list: None,
            expect: false,
            query: true,
            ddl: false,
        }
    }
}

/// The walk over one statement's tokens.
pub struct Extractor<'t, 'a> {
    toks: &'t [Token<'a>],
    i: usize,
    mode: Mode,
    needs: Vec<(Role, String)>,
    /// Common table expressions in scope: names that are not tables.
    ctes: Vec<String>,
    /// Aliases given to table references (multi-table DELETE targets name them).
    aliases: Vec<String>,
    /// SELECT … INTO OUTFILE | DUMPFILE was met.
    file_output: bool,
    /// The end of the text (for error offsets).
    end: usize,
    /// PREPARE … FROM 'text' or EXECUTE IMMEDIATE 'text' in secure mode: the text to classify
    /// in the statement's place.
    pub prepared: Option<String>,
}

impl<'t, 'a> Extractor<'t, 'a> {
    /// A walk over `toks`, one statement; `end` is the text length.
    pub fn new(toks: &'t [Token<'a>], mode: Mode, end: usize) -> Self {
        Extractor {
            toks,
            i: 0,
            mode,
            needs: Vec::new(),
            ctes: Vec::new(),
            aliases: Vec::new(),
            file_output: false,
            end,
            prepared: None,
        }
    }

    fn peek(&self) -> Option<&Token<'a>> {
        self.toks.get(self.i)
    }

    fn at(&self, k: usize) -> Option<&Token<'a>> {
        self.toks.get(self.i + k)
    }

    fn kw(&self, k: usize, word: &str) -> bool {
        self.at(k).is_some_and(|t| t.is(word))
    }

    fn punct(&self, k: usize, c: u8) -> bool {
        self.at(k).is_some_and(|t| t.is_punct(c))
    }

    fn eat(&mut self, word: &str) -> bool {
        let yes = self.kw(0, word);
        if yes {
            self.i += 1;
        }
        yes
    }

    fn eat_punct(&mut self, c: u8) -> bool {
        let yes = self.punct(0, c);
        if yes {
            self.i += 1;
        }
        yes
    }

    fn offset(&self) -> usize {
        self.peek().map_or(self.end, |t| t.start)
    }

    fn fail<T>(&self, why: &'static str) -> Result<T> {
        Err(Unreadable {
            why,
            at: self.offset(),
        })
    }

    fn done(&self) -> bool {
        self.i >= self.toks.len()
    }

    fn need(&mut self, role: Role, table: String) {
        self.needs.push((role, table));
    }

    /// A possibly qualified name (`t`, `db.t`, `` `db`.`t` ``, `.t`): its last part.
    fn name(&mut self) -> Result<String> {
        Ok(self.qualified_name()?.0)
    }

    /// A possibly qualified name: its last part, and whether it was qualified.
    fn qualified_name(&mut self) -> Result<(String, bool)> {
        let mut qualified = self.eat_punct(b'.');
        let mut last = match self.peek().and_then(Token::ident) {
            Some(n) => n,
            None => return self.fail("a table name was expected here"),
        };
        self.i += 1;
        while self.punct(0, b'.') && self.at(1).and_then(Token::ident).is_some() {
            last = self.at(1).and_then(Token::ident).unwrap_or_default();
            qualified = true;
            self.i += 2;
        }
        // `t@x`: MySQL does not allow `@` in an unquoted name, and no user variable may follow a
        // table name (sqlparser reads `t@x` as one name).
        if self.peek().is_some_and(|t| t.kind == Kind::Var) {
            return self.fail("a table name cannot be followed by a user variable");
        }
        Ok((last, qualified))
    }

    /// A table name that is a table, unless a CTE in scope has that name (a qualified name
    /// never names a CTE).
    fn table(&mut self, role: Role) -> Result<String> {
        let (n, qualified) = self.qualified_name()?;
        if qualified || !self.ctes.contains(&n) {
            self.need(role, n.clone());
        }
        Ok(n)
    }

    /// A comma-separated list of table names, each needing `role`.
    fn table_list(&mut self, role: Role) -> Result<()> {
        loop {
            self.table(role)?;
            if !self.eat_punct(b',') {
                return Ok(());
            }
        }
    }

    /// Skips a balanced `( … )` at the cursor, reading it as an expression (its subqueries
    /// are found).
    fn paren(&mut self, st: State) -> Result<()> {
        if !self.eat_punct(b'(') {
            return self.fail("'(' was expected here");
        }
        let query = self.starts_query();
        self.region(State {
            list: None,
            expect: false,
            query,
            ddl: st.ddl,
        })?;
        if !self.eat_punct(b')') {
            return self.fail("a parenthesis is not closed");
        }
        Ok(())
    }

    /// Whether the tokens at the cursor (after any number of `(`) start a query.
    fn starts_query(&self) -> bool {
        let mut k = 0;
        while self.punct(k, b'(') {
            k += 1;
        }
        ["SELECT", "WITH", "VALUES", "TABLE"]
            .iter()
            .any(|w| self.kw(k, w))
    }

    /// `WITH [RECURSIVE] name [(cols)] AS (query), …` at the cursor, if there: the CTE names
    /// join the scope (the caller drops them when the query ends). A non-recursive CTE's own
    /// name, inside its body, is a table; a recursive one's is not.
    fn with_clause(&mut self) -> Result<bool> {
        if !self.kw(0, "WITH") {
            return Ok(false);
        }
        let recursive = self.kw(1, "RECURSIVE");
        let k = if recursive { 2 } else { 1 };
        let named = self.at(k).and_then(Token::ident).is_some()
            && !self.at(k).is_some_and(reserved)
            && (self.kw(k + 1, "AS") || self.punct(k + 1, b'('));
        if !named {
            return Ok(false);
        }
        self.i += k;
        loop {
            let Some(name) = self.peek().and_then(Token::ident) else {
                return self.fail("a common table expression name was expected here");
            };
            self.i += 1;
            if self.punct(0, b'(') {
                self.paren(State::query())?;
            }
            if !self.eat("AS") {
                return self.fail("AS was expected after a common table expression name");
            }
            if recursive {
                self.ctes.push(name.clone());
            }
            if !self.punct(0, b'(') {
                return self.fail("a common table expression's query must be in parentheses");
            }
            self.paren(State::query())?;
            if !recursive {
                self.ctes.push(name);
            }
            if !self.eat_punct(b',') {
                return Ok(true);
            }
        }
    }

    /// Reads tokens until the end of the region: a `)` that closes it (left at the cursor),
    /// a `;`, or the end.
    fn region(&mut self, mut st: State) -> Result<()> {
        let scope = self.ctes.len();
        let r = self.region_inner(&mut st);
        self.ctes.truncate(scope);
        r
    }

    fn region_inner(&mut self, st: &mut State) -> Result<()> {
        // The role of the last table list, for a JOIN after a clause that ended it.
        let mut last_list = st.list.unwrap_or(Role::Reader);
        while let Some(t) = self.peek().copied() {
            if t.is_punct(b')') || t.is_punct(b';') {
                if st.expect {
                    return self.fail("a table reference was expected here");
                }
                return Ok(());
            }
            if st.expect {
                self.factor(st)?;
                st.expect = false;
                continue;
            }
            match t.kind {
                Kind::Punct => {
                    if t.is_punct(b'(') {
                        self.paren(*st)?;
                        continue;
                    }
                    if t.is_punct(b',') && st.list.is_some() {
                        st.expect = true;
                    }
                    self.i += 1;
                }
                Kind::Word => self.word(st, &mut last_list)?,
                _ => self.i += 1,
            }
        }
        if st.expect {
            return self.fail("a table reference was expected at the end");
        }
        Ok(())
    }

    /// A word in a region, outside table references.
    fn word(&mut self, st: &mut State, last_list: &mut Role) -> Result<()> {
        let t = self.toks[self.i];
        let w = |s: &str| t.is(s);
        if w("WITH") && self.with_clause()? {
            return Ok(());
        }
        self.i += 1;
        if w("SELECT") {
            st.query = true;
            st.list = None;
        } else if w("FROM") {
            // NTH_VALUE(…) FROM FIRST|LAST OVER …: not a table list (OVER, RESPECT and
            // IGNORE are reserved, so no table reference can be followed by them).
            let nth_value = (self.kw(0, "FIRST") || self.kw(0, "LAST"))
                && (self.kw(1, "OVER")
                    || ((self.kw(1, "RESPECT") || self.kw(1, "IGNORE")) && self.kw(2, "NULLS")));
            if st.query && !nth_value {
                st.list = Some(*last_list);
                st.expect = true;
            }
        } else if w("JOIN") || w("STRAIGHT_JOIN") {
            if st.query && (st.list.is_some() || w("JOIN")) {
                st.list = Some(st.list.unwrap_or(*last_list));
                st.expect = true;
            }
        } else if w("ON") && self.kw(0, "DUPLICATE") {
            st.list = None;
        } else if w("USING") && !self.punct(0, b'(') {
            // DELETE … USING <table references> (JOIN … USING takes a parenthesis).
            if st.query {
                st.list = Some(st.list.unwrap_or(*last_list));
                st.expect = true;
            }
        } else if w("TABLE") {
            // `TABLE t` (a query), `WITH TABLE t` (EXCHANGE PARTITION): a name follows.
            if self
                .peek()
                .is_some_and(|n| (n.ident().is_some() && !reserved(n)) || n.is_punct(b'.'))
            {
                if st.ddl {
                    self.table(Role::Admin)?;
                } else {
                    self.table(Role::Reader)?;
                    self.factor_tail(st)?;
                }
            }
        } else if w("INTO") {
            if self.kw(0, "OUTFILE") || self.kw(0, "DUMPFILE") {
                self.file_output = true;
            }
            st.list = None;
        } else if w("UNION") && st.ddl && (self.punct(0, b'=') || self.punct(0, b'(')) {
            // MERGE tables: UNION = (t1, t2) gives access to the tables listed.
            self.eat_punct(b'=');
            if !self.starts_query() {
                if !self.eat_punct(b'(') {
                    return self.fail("'(' was expected after UNION =");
                }
                self.table_list(Role::Admin)?;
                if !self.eat_punct(b')') {
                    return self.fail("')' was expected after the UNION table list");
                }
            }
            st.list = None;
        } else if w("REFERENCES") && st.ddl {
            self.table(Role::Admin)?;
        } else if is_any(&t, LIST_END) {
            if let Some(r) = st.list.take() {
                *last_list = r;
            }
        }
        Ok(())
    }

    /// A table factor at the cursor: a table name, a derived table, a nested join, a JSON_TABLE
    /// or LATERAL subquery, with its alias and hints.
    fn factor(&mut self, st: &mut State) -> Result<()> {
        let role = st.list.unwrap_or(Role::Reader);
        loop {
            if self.eat_punct(b'{') {
                // ODBC's { OJ t1 LEFT OUTER JOIN t2 ON … }
                self.eat("OJ");
                continue;
            }
            if self.eat("LATERAL") {
                continue;
            }
            break;
        }
        let Some(t) = self.peek().copied() else {
            return self.fail("a table reference was expected at the end");
        };
        if t.is_punct(b'(') {
            // `(SELECT …)` is a derived table; `((SELECT …) d JOIN t …)` a nested join whose
            // first reference is a derived table (its tables keep the list's role).
            let derived = ["SELECT", "WITH", "VALUES", "TABLE"]
                .iter()
                .any(|w| self.kw(1, w));
            if derived {
                // A derived table: its tables are read.
                self.paren(State::query())?;
            } else {
                // A nested join: its tables keep the list's role.
                self.i += 1;
                self.region(State {
                    list: Some(role),
                    expect: true,
                    query: true,
                    ddl: st.ddl,
                })?;
                if !self.eat_punct(b')') {
                    return self.fail("a parenthesis is not closed");
                }
            }
        } else if t.is("JSON_TABLE") && self.punct(1, b'(') {
            self.i += 1;
            self.paren(*st)?;
        } else if t.is("DUAL") {
            self.i += 1;
        } else if t.ident().is_some() || t.is_punct(b'.') {
            if t.kind == Kind::Word && reserved(&t) {
                return self.fail("a table name was expected here, not a reserved word");
            }
            self.table(role)?;
        } else {
            return self.fail("a table reference was expected here");
        }
        self.factor_tail(st)
    }

    /// What may follow a table reference: PARTITION (…), an alias and column names, index
    /// hints; then MySQL allows only a join, a list comma, or a clause.
    fn factor_tail(&mut self, st: &State) -> Result<()> {
        if self.kw(0, "PARTITION") && self.punct(1, b'(') {
            self.i += 1;
            self.paren(*st)?;
        }
        let has_as = self.eat("AS");
        if has_as && self.done() {
            return self.fail("an alias was expected after AS");
        }
        if let Some(t) = self.peek().copied() {
            let alias = match t.kind {
                Kind::Word if !reserved(&t) => true,
                Kind::Quoted | Kind::DqString | Kind::String => true,
                _ => false,
            };
            if alias {
                // A string alias is not recorded: the extractor reads no literal's text (the
                // shape cache relies on it), so a DELETE target naming it is checked as a table.
                if let Some(a) = t.ident() {
                    self.aliases.push(a);
                }
                self.i += 1;
                if self.punct(0, b'(') && !self.starts_query() {
                    self.paren(*st)?;
                }
            } else if has_as {
                return self.fail("an alias was expected after AS");
            }
        }
        while is_any(self.peek().unwrap_or(&EOF), &["USE", "IGNORE", "FORCE"])
            && (self.kw(1, "INDEX") || self.kw(1, "KEY") || self.kw(1, "VINDEX"))
        {
            self.i += 2;
            if self.eat("FOR") {
                self.eat("JOIN");
                self.eat("ORDER");
                self.eat("GROUP");
                self.eat("BY");
            }
            self.paren(*st)?;
        }
        match self.peek() {
            None => Ok(()),
            Some(t)
                if t.is_punct(b',')
                    || t.is_punct(b')')
                    || t.is_punct(b';')
                    || t.is_punct(b'}')
                    || is_any(t, AFTER_FACTOR)
                    || is_any(t, LIST_END) =>
            {
                if t.is_punct(b'}') {
                    self.i += 1;
                }
                Ok(())
            }
            Some(_) => self.fail("unexpected text after a table reference"),
        }
    }

    /// The rest of the statement, read as a query region.
    fn rest(&mut self, st: State) -> Result<()> {
        self.region(st)?;
        if !self.done() {
            return self.fail("unbalanced ')'");
        }
        Ok(())
    }

    /// Needs sorted and deduplicated, as a checked class.
    fn checked(&mut self, plan: &'static str) -> Class {
        let mut needs = std::mem::take(&mut self.needs);
        needs.sort();
        needs.dedup();
        Class::Checked { plan, needs }
    }

    fn unchecked(kind: &'static str) -> Class {
        Class::Unchecked { kind }
    }

    /// Secure mode refuses `kind` by design; Vitess's rules let it through unchecked.
    fn by_design(&self, kind: &'static str, why: &str) -> Class {
        match self.mode {
            Mode::Vitess => Class::Unchecked { kind },
            Mode::Secure => Class::Denied {
                reason: format!(
                    "secure mode refuses {kind} statements: {why}; to let them through as Vitess does, set mode = \"vitess\" in [tableacl], or send them as the exempt user (queryserver-config-acl-exempt-acl)"
                ),
            },
        }
    }

    /// Classifies the statement (the whole token slice).
    pub fn statement(&mut self) -> Result<Class> {
        let Some(first) = self.peek().copied() else {
            return self.fail("the statement is empty");
        };
        if first.is_punct(b'(') {
            return self.query_statement();
        }
        if first.kind != Kind::Word {
            return self.fail("a statement cannot start here");
        }
        let up = first.text.to_ascii_uppercase();
        match up.as_str() {
            "SELECT" | "VALUES" | "TABLE" => self.query_statement(),
            "WITH" => {
                if !self.with_clause()? {
                    return self.fail("WITH must start a common table expression");
                }
                match self.peek() {
                    Some(t) if t.is("UPDATE") => self.update(),
                    Some(t) if t.is("DELETE") => self.delete(),
                    Some(t) if t.is("INSERT") || t.is("REPLACE") => self.insert(),
                    _ => self.query_statement(),
                }
            }
            "INSERT" | "REPLACE" => self.insert(),
            "UPDATE" => self.update(),
            "DELETE" => self.delete(),
            "CREATE" => self.create(),
            "ALTER" => self.alter(),
            "DROP" => self.drop(),
            "RENAME" => {
                self.i += 1;
                if self.eat("TABLE") || self.eat("TABLES") {
                    loop {
                        self.table(Role::Admin)?;
                        if !self.eat("TO") {
                            return self.fail("TO was expected in RENAME TABLE");
                        }
                        self.table(Role::Admin)?;
                        if !self.eat_punct(b',') {
                            break;
                        }
                    }
                    self.end_of_statement()?;
                    return Ok(self.checked("DDL"));
                }
                Ok(self.by_design(
                    "account management (RENAME USER)",
                    "it changes accounts, which table ACLs do not cover",
                ))
            }
            "TRUNCATE" => {
                self.i += 1;
                self.eat("TABLE");
                self.table(Role::Admin)?;
                self.end_of_statement()?;
                Ok(self.checked("DDL"))
            }
            "ANALYZE" => {
                self.i += 1;
                self.eat("NO_WRITE_TO_BINLOG");
                self.eat("LOCAL");
                if !(self.eat("TABLE") || self.eat("TABLES")) {
                    return self.fail("TABLE was expected after ANALYZE");
                }
                self.table_list(Role::Writer)?;
                Ok(self.checked("Analyze"))
            }
            "OPTIMIZE" | "REPAIR" | "CHECK" | "CHECKSUM" => {
                self.i += 1;
                self.eat("NO_WRITE_TO_BINLOG");
                self.eat("LOCAL");
                let _ = self.eat("TABLE") || self.eat("TABLES");
                let role = if up == "CHECK" || up == "CHECKSUM" {
                    Role::Reader
                } else {
                    Role::Admin
                };
                self.table_list(role)?;
                Ok(match self.mode {
                    Mode::Vitess => Self::unchecked("table maintenance"),
                    Mode::Secure => self.checked(match up.as_str() {
                        "OPTIMIZE" => "Optimize",
                        "REPAIR" => "Repair",
                        "CHECK" => "Check",
                        _ => "Checksum",
                    }),
                })
            }
            "FLUSH" => {
                self.i += 1;
                self.eat("NO_WRITE_TO_BINLOG");
                self.eat("LOCAL");
                if (self.kw(0, "TABLES") || self.kw(0, "TABLE"))
                    && self
                        .at(1)
                        .is_some_and(|t| (t.ident().is_some() && !reserved(t)) || t.is_punct(b'.'))
                {
                    self.i += 1;
                    self.table_list(Role::Admin)?;
                    return Ok(self.checked("Flush"));
                }
                Ok(self.by_design(
                    "FLUSH",
                    "without table names it acts on every table (FLUSH TABLES WITH READ LOCK blocks all writes)",
                ))
            }
            "SET" => self.session("SET"),
            "DO" => match self.mode {
                Mode::Vitess => Ok(Self::unchecked("DO")),
                Mode::Secure => {
                    self.i += 1;
                    self.rest(State {
                        query: false,
                        ..State::query()
                    })?;
                    Ok(self.checked("Select"))
                }
            },
            "SHOW" => self.show(),
            "DESCRIBE" | "DESC" | "EXPLAIN" | "VEXPLAIN" => self.explain(),
            "USE" | "KILL" | "BEGIN" | "START" | "COMMIT" | "ROLLBACK" | "SAVEPOINT"
            | "RELEASE" | "UNLOCK" | "XA" | "HELP" | "DEALLOCATE" => self.control(&up),
            "LOCK" => self.lock(),
            "LOAD" => self.load(),
            "HANDLER" => self.handler(),
            "CALL" => self.call(),
            "PREPARE" => self.prepare(),
            "EXECUTE" => self.execute(),
            "STREAM" | "VSTREAM" => {
                // Vitess's STREAM|VSTREAM select_exprs FROM t: reads t.
                self.i += 1;
                self.rest(State::query())?;
                Ok(self.checked("Select"))
            }
            "GRANT" | "REVOKE" => Ok(self.by_design(
                "account management (GRANT, REVOKE)",
                "it changes privileges, which table ACLs do not cover",
            )),
            "REVERT" | "PURGE" | "SHUTDOWN" | "RESTART" | "INSTALL" | "UNINSTALL" | "CLONE"
            | "RESET" | "CHANGE" | "STOP" | "BINLOG" | "CACHE" | "IMPORT" => Ok(self.by_design(
                "server administration",
                "it acts on the server, not on tables that table ACLs name",
            )),
            _ => self.fail("this statement is not one vtguard knows"),
        }
    }

    fn end_of_statement(&self) -> Result<()> {
        if self.done() {
            Ok(())
        } else {
            self.fail("unexpected text at the end of the statement")
        }
    }

    /// SELECT, VALUES, TABLE, a parenthesized query, with its UNIONs.
    fn query_statement(&mut self) -> Result<Class> {
        // Vitess: SELECT NEXT [n|:a] VALUE[S] FROM seq advances a sequence (WRITER).
        if self.kw(0, "SELECT") && self.kw(1, "NEXT") {
            let mut k = 2;
            if self
                .at(k)
                .is_some_and(|t| matches!(t.kind, Kind::Number | Kind::Param))
            {
                k += 1;
            }
            if (self.kw(k, "VALUE") || self.kw(k, "VALUES")) && self.kw(k + 1, "FROM") {
                let save = self.i;
                self.i += k + 2;
                let seq = self.name();
                if let (Ok(seq), true) = (seq, self.done()) {
                    self.need(Role::Writer, seq);
                    return Ok(self.checked("Select"));
                }
                self.i = save;
            }
        }
        self.rest(State::query())?;
        if self.file_output && self.mode == Mode::Secure {
            return Ok(self.by_design(
                "SELECT … INTO OUTFILE|DUMPFILE",
                "it writes a file on the database server",
            ));
        }
        Ok(self.checked("Select"))
    }

    fn insert(&mut self) -> Result<Class> {
        let plan = if self.kw(0, "REPLACE") {
            "Replace"
        } else {
            "Insert"
        };
        self.i += 1;
        while ["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE"]
            .iter()
            .any(|w| self.kw(0, w))
        {
            self.i += 1;
        }
        self.eat("INTO");
        self.table(Role::Writer)?;
        // What MySQL allows after the target: [PARTITION (…)] [(columns)] then VALUES, VALUE,
        // SELECT, TABLE, WITH, SET or a parenthesized query (fuzz: sqlparser reads more).
        if self.kw(0, "PARTITION") && self.punct(1, b'(') {
            self.i += 1;
            self.paren(State::query())?;
        }
        let source = |x: &Self| {
            ["VALUES", "VALUE", "SELECT", "TABLE", "WITH", "SET"]
                .iter()
                .any(|w| x.kw(0, w))
        };
        if self.punct(0, b'(') {
            self.paren(State {
                query: false,
                ..State::query()
            })?;
            if !(self.done() || self.punct(0, b';') || self.punct(0, b'(') || source(self)) {
                return self.fail("VALUES, SELECT, TABLE or SET was expected after the columns");
            }
        } else if !source(self) {
            return self.fail("VALUES, SELECT, TABLE or SET was expected after the table");
        }
        self.rest(State {
            query: false,
            ..State::query()
        })?;
        Ok(self.checked(plan))
    }

    fn update(&mut self) -> Result<Class> {
        self.i += 1;
        self.eat("LOW_PRIORITY");
        self.eat("IGNORE");
        self.rest(State {
            list: Some(Role::Writer),
            expect: true,
            query: true,
            ddl: false,
        })?;
        Ok(self.checked("Update"))
    }

    /// A DELETE target: `t`, `db.t`, `t.*`.
    fn delete_target(&mut self) -> Result<String> {
        let n = self.name()?;
        if self.punct(0, b'.') && self.punct(1, b'*') {
            self.i += 2;
        }
        Ok(n)
    }

    fn delete(&mut self) -> Result<Class> {
        self.i += 1;
        while ["LOW_PRIORITY", "QUICK", "IGNORE"]
            .iter()
            .any(|w| self.kw(0, w))
        {
            self.i += 1;
        }
        let writers = State {
            list: Some(Role::Writer),
            expect: true,
            query: true,
            ddl: false,
        };
        let mut targets = Vec::new();
        if self.eat("FROM") {
            let start = self.i;
            loop {
                targets.push(self.delete_target()?);
                if !self.eat_punct(b',') {
                    break;
                }
            }
            if self.eat("USING") {
                // DELETE FROM t1, t2 USING <table references>
                self.rest(writers)?;
            } else {
                // DELETE FROM t [AS a] [PARTITION (…)] WHERE …: one table (several need USING).
                if targets.len() > 1 {
                    return self.fail("USING was expected after the tables to delete from");
                }
                targets.clear();
                self.i = start;
                self.rest(writers)?;
            }
        } else {
            // DELETE t1[.*], t2 FROM <table references>
            loop {
                targets.push(self.delete_target()?);
                if !self.eat_punct(b',') {
                    break;
                }
            }
            if !self.eat("FROM") {
                return self.fail("FROM was expected after the tables to delete from");
            }
            self.rest(writers)?;
        }
        // A target names a table reference (by alias or name); one that names neither is
        // checked as a table too.
        for t in targets {
            let known = self.aliases.contains(&t)
                || self
                    .needs
                    .iter()
                    .any(|(r, n)| *r == Role::Writer && *n == t);
            if !known && !self.ctes.contains(&t) {
                self.need(Role::Writer, t);
            }
        }
        Ok(self.checked("Delete"))
    }

    /// Skips CREATE/ALTER's options before the object kind: OR REPLACE, ALGORITHM = x,
    /// DEFINER = user, SQL SECURITY x, and the like.
    fn skip_ddl_options(&mut self) {
        loop {
            if self.eat("OR") {
                self.eat("REPLACE");
            } else if self.kw(0, "ALGORITHM") || self.kw(0, "DEFINER") {
                self.i += 1;
                self.eat_punct(b'=');
                // a value, or user@host
                self.i += 1;
                if self.peek().is_some_and(|t| t.kind == Kind::Var) {
                    self.i += 1;
                } else if self.punct(0, b'@') {
                    self.i += 2;
                }
                if self.punct(0, b'(') && self.punct(1, b')') {
                    self.i += 2;
                }
            } else if self.kw(0, "SQL") && self.kw(1, "SECURITY") {
                self.i += 3;
            } else if [
                "TEMPORARY",
                "ONLINE",
                "OFFLINE",
                "IGNORE",
                "UNIQUE",
                "FULLTEXT",
                "SPATIAL",
                "AGGREGATE",
                "UNDEFINED",
            ]
            .iter()
            .any(|w| self.kw(0, w))
            {
                self.i += 1;
            } else {
                return;
            }
        }
    }

    fn if_exists(&mut self) {
        if self.kw(0, "IF") && self.kw(1, "NOT") && self.kw(2, "EXISTS") {
            self.i += 3;
        } else if self.kw(0, "IF") && self.kw(1, "EXISTS") {
            self.i += 2;
        }
    }

    fn ddl_rest(&mut self) -> Result<()> {
        self.rest(State {
            list: None,
            expect: false,
            query: false,
            ddl: true,
        })
    }

    fn create(&mut self) -> Result<Class> {
        self.i += 1;
        self.skip_ddl_options();
        let Some(kind) = self.peek().copied() else {
            return self.fail("CREATE what?");
        };
        self.i += 1;
        let up = if kind.kind == Kind::Word {
            kind.text.to_ascii_uppercase()
        } else {
            String::new()
        };
        match up.as_str() {
            "TABLE" => {
                self.if_exists();
                self.table(Role::Admin)?;
                // CREATE TABLE t LIKE u | (LIKE u): u's definition is read.
                let paren = self.punct(0, b'(') && self.kw(1, "LIKE");
                if paren {
                    self.i += 1;
                }
                if self.eat("LIKE") {
                    self.table(Role::Admin)?;
                    if paren && !self.eat_punct(b')') {
                        return self.fail("')' was expected after CREATE TABLE (LIKE t");
                    }
                }
                self.ddl_rest()?;
                Ok(self.checked("DDL"))
            }
            "INDEX" => {
                self.if_exists();
                self.i += 1; // the index name
                if self.eat("USING") {
                    self.i += 1;
                }
                if !self.eat("ON") {
                    return self.fail("ON was expected in CREATE INDEX");
                }
                self.table(Role::Admin)?;
                self.ddl_rest()?;
                Ok(self.checked("DDL"))
            }
            "VIEW" => {
                self.if_exists();
                self.table(Role::Admin)?;
                self.ddl_rest()?;
                Ok(self.checked("DDL"))
            }
            "DATABASE" | "SCHEMA" => Ok(Self::unchecked("database DDL")),
            "PROCEDURE" | "FUNCTION" | "TRIGGER" | "EVENT" => Ok(self.by_design(
                "stored programs (CREATE PROCEDURE, FUNCTION, TRIGGER, EVENT)",
                "their bodies run later, with tables that table ACLs cannot check when they run",
            )),
            "USER" | "ROLE" => Ok(self.by_design(
                "account management (CREATE USER, ROLE)",
                "it changes accounts, which table ACLs do not cover",
            )),
            "SERVER" | "TABLESPACE" | "LOGFILE" | "RESOURCE" | "UNDO" | "SPATIAL" => Ok(self
                .by_design(
                    "server administration",
                    "it acts on the server, not on tables that table ACLs name",
                )),
            _ => self.fail("CREATE of this kind is not one vtguard knows"),
        }
    }

    fn alter(&mut self) -> Result<Class> {
        self.i += 1;
        self.skip_ddl_options();
        let Some(kind) = self.peek().copied() else {
            return self.fail("ALTER what?");
        };
        self.i += 1;
        let up = if kind.kind == Kind::Word {
            kind.text.to_ascii_uppercase()
        } else {
            String::new()
        };
        match up.as_str() {
            "TABLE" => {
                self.table(Role::Admin)?;
                // RENAME [TO|AS] t2 names the new table.
                while let Some(t) = self.peek().copied() {
                    if t.is("RENAME")
                        && !self.kw(1, "COLUMN")
                        && !self.kw(1, "INDEX")
                        && !self.kw(1, "KEY")
                    {
                        self.i += 1;
                        let _ = self.eat("TO") || self.eat("AS");
                        self.table(Role::Admin)?;
                        continue;
                    }
                    if t.is_punct(b'(') {
                        self.paren(State {
                            ddl: true,
                            query: false,
                            ..State::query()
                        })?;
                        continue;
                    }
                    if t.is_punct(b';') {
                        break;
                    }
                    let mut st = State {
                        list: None,
                        expect: false,
                        query: false,
                        ddl: true,
                    };
                    let mut last = Role::Reader;
                    if t.kind == Kind::Word {
                        self.word(&mut st, &mut last)?;
                    } else {
                        self.i += 1;
                    }
                }
                self.end_of_statement()?;
                Ok(self.checked("DDL"))
            }
            "VIEW" => {
                self.table(Role::Admin)?;
                self.ddl_rest()?;
                Ok(self.checked("DDL"))
            }
            "DATABASE" | "SCHEMA" => Ok(Self::unchecked("database DDL")),
            "VSCHEMA" => Ok(self.by_design(
                "ALTER VSCHEMA",
                "it changes Vitess's routing, which table ACLs do not cover",
            )),
            "VITESS_MIGRATION" => Ok(self.by_design(
                "ALTER VITESS_MIGRATION",
                "it controls schema migrations, which table ACLs do not cover",
            )),
            "PROCEDURE" | "FUNCTION" | "EVENT" => Ok(self.by_design(
                "stored programs (ALTER PROCEDURE, FUNCTION, EVENT)",
                "table ACLs cannot check stored code",
            )),
            "USER" | "ROLE" => Ok(self.by_design(
                "account management (ALTER USER)",
                "it changes accounts, which table ACLs do not cover",
            )),
            "INSTANCE" | "SERVER" | "TABLESPACE" | "LOGFILE" | "RESOURCE" | "UNDO" => Ok(self
                .by_design(
                    "server administration",
                    "it acts on the server, not on tables that table ACLs name",
                )),
            _ => self.fail("ALTER of this kind is not one vtguard knows"),
        }
    }

    fn drop(&mut self) -> Result<Class> {
        self.i += 1;
        self.eat("TEMPORARY");
        let Some(kind) = self.peek().copied() else {
            return self.fail("DROP what?");
        };
        self.i += 1;
        let up = if kind.kind == Kind::Word {
            kind.text.to_ascii_uppercase()
        } else {
            String::new()
        };
        match up.as_str() {
            "TABLE" | "TABLES" | "VIEW" => {
                self.if_exists();
                self.table_list(Role::Admin)?;
                let _ = self.eat("RESTRICT") || self.eat("CASCADE");
                self.end_of_statement()?;
                Ok(self.checked("DDL"))
            }
            "INDEX" => {
                self.i += 1; // the index name
                if !self.eat("ON") {
                    return self.fail("ON was expected in DROP INDEX");
                }
                self.table(Role::Admin)?;
                self.ddl_rest()?;
                Ok(self.checked("DDL"))
            }
            "PREPARE" => Ok(Self::unchecked("DEALLOCATE PREPARE")),
            "DATABASE" | "SCHEMA" => Ok(self.by_design(
                "DROP DATABASE",
                "it drops every table of the database, which table ACLs cannot name",
            )),
            "PROCEDURE" | "FUNCTION" | "TRIGGER" | "EVENT" => Ok(self.by_design(
                "stored programs (DROP PROCEDURE, FUNCTION, TRIGGER, EVENT)",
                "table ACLs cannot check stored code",
            )),
            "USER" | "ROLE" => Ok(self.by_design(
                "account management (DROP USER, ROLE)",
                "it changes accounts, which table ACLs do not cover",
            )),
            "SERVER" | "TABLESPACE" | "LOGFILE" | "RESOURCE" | "UNDO" | "SPATIAL" => Ok(self
                .by_design(
                    "server administration",
                    "it acts on the server, not on tables that table ACLs name",
                )),
            _ => self.fail("DROP of this kind is not one vtguard knows"),
        }
    }

    /// SET: unchecked; in secure mode its subqueries are read.
    fn session(&mut self, kind: &'static str) -> Result<Class> {
        match self.mode {
            Mode::Vitess => Ok(Self::unchecked("session or metadata statement")),
            Mode::Secure => {
                self.i += 1;
                self.rest(State {
                    query: false,
                    ..State::query()
                })?;
                if self.needs.is_empty() {
                    Ok(Self::unchecked("session or metadata statement"))
                } else {
                    Ok(self.checked(if kind == "SET" { "Set" } else { "Show" }))
                }
            }
        }
    }

    /// SHOW: unchecked by Vitess. Secure mode: the forms that show one table (COLUMNS, INDEX,
    /// CREATE TABLE|VIEW) need READER on it, and subqueries are read.
    fn show(&mut self) -> Result<Class> {
        if self.mode == Mode::Vitess {
            return Ok(Self::unchecked("session or metadata statement"));
        }
        self.i += 1;
        self.eat("EXTENDED");
        self.eat("FULL");
        if self.kw(0, "TABLE") && self.kw(1, "STATUS") {
            // SHOW TABLE STATUS [FROM db]: every table's metadata, like SHOW TABLES.
            self.i += 2;
        }
        let table_from = ["COLUMNS", "FIELDS", "INDEX", "INDEXES", "KEYS"]
            .iter()
            .any(|w| self.kw(0, w))
            && (self.kw(1, "FROM") || self.kw(1, "IN"));
        let create = self.kw(0, "CREATE") && (self.kw(1, "TABLE") || self.kw(1, "VIEW"));
        if table_from || create {
            self.i += 2;
            self.table(Role::Reader)?;
        } else if self.kw(0, "VSCHEMA")
            && self.kw(1, "VINDEXES")
            && (self.kw(2, "FROM") || self.kw(2, "ON"))
        {
            self.i += 3;
            self.table(Role::Reader)?;
        }
        self.rest(State {
            query: false,
            ..State::query()
        })?;
        if self.needs.is_empty() {
            Ok(Self::unchecked("session or metadata statement"))
        } else {
            Ok(self.checked("Show"))
        }
    }

    /// EXPLAIN|DESCRIBE t [col], or EXPLAIN [options] statement; VEXPLAIN [kind] statement.
    fn explain(&mut self) -> Result<Class> {
        if self.mode == Mode::Vitess {
            return Ok(Self::unchecked("EXPLAIN"));
        }
        self.i += 1;
        loop {
            if self.kw(0, "FORMAT") {
                self.i += 1;
                self.eat_punct(b'=');
                self.i += 1;
            } else if [
                "ANALYZE",
                "EXTENDED",
                "PARTITIONS",
                "ALL",
                "QUERIES",
                "PLAN",
                "TRACE",
                "KEYS",
            ]
            .iter()
            .any(|w| self.kw(0, w))
            {
                self.i += 1;
            } else {
                break;
            }
        }
        if self.kw(0, "FOR") && self.kw(1, "CONNECTION") {
            return Ok(Self::unchecked("EXPLAIN"));
        }
        let statement = self.punct(0, b'(')
            || [
                "SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "WITH", "TABLE", "VALUES",
            ]
            .iter()
            .any(|w| self.kw(0, w));
        if statement {
            let rest = &self.toks[self.i..];
            let mut inner = Extractor::new(rest, self.mode, self.end);
            inner.ctes = self.ctes.clone();
            return inner.statement().map_err(|e| Unreadable {
                at: e.at,
                why: e.why,
            });
        }
        // DESCRIBE t [column | 'pattern']
        self.table(Role::Reader)?;
        Ok(self.checked("Show"))
    }

    fn control(&mut self, up: &str) -> Result<Class> {
        if up == "BEGIN" && self.kw(1, "NOT") {
            return Ok(self.by_design(
                "compound statements (BEGIN NOT ATOMIC)",
                "table ACLs cannot check the statements inside",
            ));
        }
        if up == "START" && !self.kw(1, "TRANSACTION") {
            return Ok(self.by_design(
                "server administration",
                "it acts on the server, not on tables that table ACLs name",
            ));
        }
        Ok(Self::unchecked("session or metadata statement"))
    }

    /// LOCK TABLES t [AS a] READ | WRITE, …: unchecked by Vitess; secure mode needs READER
    /// for READ and WRITER for WRITE.
    fn lock(&mut self) -> Result<Class> {
        self.i += 1;
        if !(self.eat("TABLES") || self.eat("TABLE")) {
            return Ok(self.by_design("LOCK INSTANCE", "it blocks the whole server"));
        }
        if self.mode == Mode::Vitess {
            return Ok(Self::unchecked("LOCK TABLES"));
        }
        loop {
            let name = self.name()?;
            if self.eat("AS")
                || self
                    .peek()
                    .is_some_and(|t| t.ident().is_some() && !reserved(t))
            {
                self.i += 1;
            }
            let role = if self.eat("READ") {
                self.eat("LOCAL");
                Role::Reader
            } else {
                self.eat("LOW_PRIORITY");
                if !self.eat("WRITE") {
                    return self.fail("READ or WRITE was expected in LOCK TABLES");
                }
                Role::Writer
            };
            if !self.ctes.contains(&name) {
                self.need(role, name);
            }
            if !self.eat_punct(b',') {
                break;
            }
        }
        self.end_of_statement()?;
        Ok(self.checked("Lock"))
    }

    /// LOAD DATA|XML … INTO TABLE t: writes t (secure mode; Vitess does not check it).
    fn load(&mut self) -> Result<Class> {
        if !(self.kw(1, "DATA") || self.kw(1, "XML")) {
            return self.by_design_admin();
        }
        self.i += 2;
        while let Some(t) = self.peek() {
            if t.is("INTO") && self.kw(1, "TABLE") {
                break;
            }
            self.i += 1;
        }
        if self.done() {
            return self.fail("INTO TABLE was expected in LOAD DATA");
        }
        self.i += 2;
        self.table(Role::Writer)?;
        if self.mode == Mode::Vitess {
            return Ok(Self::unchecked("LOAD DATA"));
        }
        self.rest(State {
            query: false,
            ..State::query()
        })?;
        Ok(self.checked("Load"))
    }

    fn by_design_admin(&self) -> Result<Class> {
        Ok(self.by_design(
            "server administration",
            "it acts on the server, not on tables that table ACLs name",
        ))
    }

    /// HANDLER t OPEN|READ …: reads t (secure mode); HANDLER t CLOSE releases it.
    fn handler(&mut self) -> Result<Class> {
        self.i += 1;
        let name = self.name()?;
        if self.mode == Mode::Vitess || self.kw(0, "CLOSE") {
            return Ok(Self::unchecked("HANDLER"));
        }
        if !(self.kw(0, "OPEN") || self.kw(0, "READ")) {
            return self.fail("OPEN, READ or CLOSE was expected in HANDLER");
        }
        if !self.ctes.contains(&name) {
            self.need(Role::Reader, name);
        }
        self.rest(State {
            query: false,
            ..State::query()
        })?;
        Ok(self.checked("Handler"))
    }

    /// CALL p(…): stored code table ACLs cannot see. Secure mode lets it through only where
    /// the policy grants WRITER on the entry `call:<procedure>`.
    fn call(&mut self) -> Result<Class> {
        if self.mode == Mode::Vitess {
            return Ok(Self::unchecked("CALL"));
        }
        self.i += 1;
        let name = self.name()?;
        self.need(Role::Writer, format!("call:{name}"));
        self.rest(State {
            query: false,
            ..State::query()
        })?;
        Ok(self.checked("Call"))
    }

    /// PREPARE s FROM 'sql' | @var.
    fn prepare(&mut self) -> Result<Class> {
        self.i += 1;
        if self.peek().and_then(Token::ident).is_none() {
            return self.fail("a statement name was expected after PREPARE");
        }
        self.i += 1;
        if !self.eat("FROM") {
            return self.fail("FROM was expected in PREPARE");
        }
        self.prepared("PREPARE")
    }

    /// The text a PREPARE or EXECUTE IMMEDIATE runs: a lone string literal is classified as if
    /// sent directly; anything else cannot be seen, and secure mode refuses it.
    fn prepared(&mut self, what: &'static str) -> Result<Class> {
        if self.mode == Mode::Vitess {
            return Ok(Self::unchecked("PREPARE"));
        }
        let literal = match (self.peek(), self.toks.len() - self.i) {
            (Some(t), 1) => t.string_value(),
            _ => None,
        };
        match literal {
            Some(sql) => {
                self.prepared = Some(sql);
                Ok(Self::unchecked("PREPARE"))
            }
            None => Ok(Class::Denied {
                reason: format!(
                    "secure mode refuses {what} of text that is not a string literal: the statement it runs cannot be checked; use a literal, or set mode = \"vitess\" in [tableacl]"
                ),
            }),
        }
    }

    fn execute(&mut self) -> Result<Class> {
        self.i += 1;
        if self.eat("IMMEDIATE") {
            return self.prepared("EXECUTE IMMEDIATE");
        }
        Ok(Self::unchecked("EXECUTE of a prepared statement"))
    }
}

static EOF: Token<'static> = Token {
    kind: Kind::Punct,
    text: ";",
    start: 0,
};

/// One statement of a multi-statement text.
pub struct Piece<'t, 'a> {
    pub tokens: &'t [Token<'a>],
    /// A stored program (CREATE PROCEDURE|FUNCTION|TRIGGER|EVENT, BEGIN NOT ATOMIC) whose body
    /// may hold `;`.
    pub program: bool,
}

/// Splits tokens into statements at top-level `;`. A stored program's body (CREATE
/// PROCEDURE … BEGIN …; …; END) is one statement: BEGIN … END blocks are followed.
pub fn split<'t, 'a>(toks: &'t [Token<'a>]) -> Vec<Piece<'t, 'a>> {
    let mut out = Vec::new();
    let mut from = 0;
    let mut depth = 0usize;
    let mut program = false;
    for (i, t) in toks.iter().enumerate() {
        if i == from {
            program = (t.is("BEGIN") && toks.get(i + 1).is_some_and(|n| n.is("NOT")))
                || t.is("CREATE")
                    && toks[i..]
                        .iter()
                        .take(12)
                        .take_while(|x| !x.is_punct(b'(') && !x.is_punct(b';'))
                        .any(|x| {
                            x.is("PROCEDURE")
                                || x.is("FUNCTION")
                                || x.is("TRIGGER")
                                || x.is("EVENT")
                        });
            depth = 0;
        }
        if program && t.kind == Kind::Word {
            if t.is("BEGIN") || t.is("CASE") {
                depth += 1;
            } else if t.is("END") {
                let closes_other = toks
                    .get(i + 1)
                    .is_some_and(|n| n.is("IF") || n.is("LOOP") || n.is("WHILE") || n.is("REPEAT"));
                if !closes_other {
                    depth = depth.saturating_sub(1);
                }
            }
        }
        if t.is_punct(b';') && depth == 0 {
            if i > from {
                out.push(Piece {
                    tokens: &toks[from..i],
                    program,
                });
            }
            from = i + 1;
        }
    }
    if from < toks.len() {
        out.push(Piece {
            tokens: &toks[from..],
            program,
        });
    }
    out
}

/// Words that start a statement only inside a stored program's body.
const BODY_ONLY: &[&str] = &[
    "END", "DECLARE", "IF", "ELSE", "ELSEIF", "WHILE", "REPEAT", "LOOP", "LEAVE", "ITERATE",
    "RETURN", "OPEN", "FETCH", "CLOSE", "SIGNAL", "RESIGNAL", "GET", "CASE", "WHEN", "UNTIL",
];

/// The statements a stored program's text holds after its first `;`, as the server would run
/// them if its BEGIN … END blocks end earlier than they seem to (`begin` is also a valid
/// variable name): each one that reads as a statement; one that does not read and does not
/// start like a body statement makes the text unreadable.
pub fn inside_program<'t, 'a>(
    program: &'t [Token<'a>],
    mode: Mode,
    end: usize,
) -> Result<Vec<Class>> {
    let mut out = Vec::new();
    let mut pieces = program.split(|t| t.is_punct(b';')).skip(1);
    for piece in pieces.by_ref() {
        if piece.is_empty() {
            continue;
        }
        let mut x = Extractor::new(piece, mode, end);
        match x.statement() {
            Ok(c @ Class::Checked { .. }) => out.push(c),
            Ok(_) => {}
            Err(e) => {
                let first = &piece[0];
                // `lbl: LOOP …` (Vitess's lexer reads `:loop` as a placeholder). Spacing is not
                // looked at: the shape cache drops it.
                let label = piece.len() > 1
                    && (piece[1].is_punct(b':')
                        || (piece[1].kind == Kind::Param && piece[1].text.starts_with(':')));
                if !(is_any(first, BODY_ONLY) || first.is("BEGIN") || label) {
                    return Err(e);
                }
            }
        }
    }
    Ok(out)
}
