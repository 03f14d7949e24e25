//! MySQL's lexical rules, as the server applies them: the one lexer of the table-ACL classifier.
//!
//! It borrows from the text (no allocation per token) and knows what changes MySQL's reading of a
//! statement: `#`, `-- ` and `/* */` comments; executable comments (`/*! … */`, `/*!50700 … */`,
//! MariaDB's `/*M! … */`), whose content the server runs; backslash escapes and doubled quotes;
//! identifiers that start with digits (`3t`, `db.1t`); `_charset'…'`, `N'…'`, `x'…'`, `b'…'`.
//!
//! A statement can read differently on the server depending on the session (sql_mode
//! `NO_BACKSLASH_ESCAPES`) and the server version (versioned comments): [`Options`] selects
//! one reading, and [`Lexed`] says which other readings exist, so that the classifier can check
//! them all.

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A bare word: keyword or identifier, as written.
    Word,
    /// A `` `backticked` `` identifier.
    Quoted,
    /// A `"double-quoted"` string (an identifier under sql_mode ANSI_QUOTES).
    DqString,
    /// A `'single-quoted'` string, also `N'…'` (the `N` is part of the token).
    String,
    /// A number, `0x1F`, `0b01`, `x'1F'`, `b'01'`.
    Number,
    /// `@name`, `@'name'`, `@@name`, `@@session.name`.
    Var,
    /// A placeholder: `?`, Vitess's `:name` and `::name`.
    Param,
    /// One character of punctuation or operator.
    Punct,
    /// The start of a versioned executable comment (`/*!50700`, `/*M!`), which the server runs
    /// or skips depending on its version.
    VersionedOpen,
    /// The end of a versioned executable comment.
    VersionedClose,
}

/// One token: its kind and its text exactly as written (quotes included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    pub kind: Kind,
    pub text: &'a str,
    /// Byte offset in the statement text.
    pub start: usize,
}

impl<'a> Token<'a> {
    /// Whether this is the bare word `kw` (case-insensitive); quoted identifiers never are.
    pub fn is(&self, kw: &str) -> bool {
        self.kind == Kind::Word && self.text.eq_ignore_ascii_case(kw)
    }

    /// Whether this is the punctuation `c`.
    pub fn is_punct(&self, c: u8) -> bool {
        self.kind == Kind::Punct && self.text.as_bytes()[0] == c
    }

    /// The identifier this token names, unquoted and unescaped: a word, a backticked name,
    /// or a double-quoted string (read as an identifier, as under ANSI_QUOTES).
    pub fn ident(&self) -> Option<String> {
        match self.kind {
            Kind::Word => Some(self.text.to_owned()),
            Kind::Quoted => Some(unquote(self.text, b'`', false)),
            Kind::DqString => Some(unquote(self.text, b'"', true)),
            _ => None,
        }
    }

    /// The value of a single-quoted string literal (`'…'` or `N'…'`), unescaped as MySQL does.
    pub fn string_value(&self) -> Option<String> {
        match self.kind {
            Kind::String => {
                let t = self.text.trim_start_matches(['N', 'n']);
                Some(unquote(t, b'\'', true))
            }
            _ => None,
        }
    }
}

/// The text between quotes `q`, with doubled quotes and (where `backslash`) backslash escapes
/// resolved.
fn unquote(text: &str, q: u8, backslash: bool) -> String {
    let inner = &text[1..text.len().saturating_sub(1).max(1)];
    let b = inner.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if backslash && c == b'\\' && i + 1 < b.len() {
            out.push(match b[i + 1] {
                b'n' => b'\n',
                b't' => b'\t',
                b'r' => b'\r',
                b'0' => 0,
                b'b' => 8,
                b'Z' => 26,
                other => other,
            });
            i += 2;
        } else if c == q && b.get(i + 1) == Some(&q) {
            out.push(q);
            i += 2;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Which reading of the text to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Backslash escapes in strings (MySQL's default; off under `NO_BACKSLASH_ESCAPES`).
    pub backslash_escapes: bool,
    /// Versioned comments with a version above this are skipped, as a server of that version
    /// does; `None`: every one is run.
    pub skip_versions_above: Option<u32>,
    /// Vitess's `// …` line comments (MySQL rejects `//`, so the server never runs what
    /// follows on that line).
    pub slash_comments: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backslash_escapes: true,
            skip_versions_above: None,
            slash_comments: false,
        }
    }
}

/// A statement string as tokens, and what could make the server read it otherwise.
#[derive(Debug, Default)]
pub struct Lexed<'a> {
    pub tokens: Vec<Token<'a>>,
    /// A quoted token holds a backslash: the text reads otherwise under `NO_BACKSLASH_ESCAPES`.
    pub backslash: bool,
    /// A backslash in a quoted token follows a byte ≥ 0x80: under a multi-byte connection
    /// character set (GBK, SJIS, …) that byte may swallow the backslash.
    pub backslash_after_high_byte: bool,
    /// The versions of the versioned comments met (MariaDB's `/*M!` without a number: 1).
    pub versions: Vec<u32>,
    /// A `//` line comment was skipped (Vitess's; MySQL reads `//` as two divisions).
    pub slash_comment: bool,
}

/// Why text cannot be tokenized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LexError {
    #[error("a quoted string or name that starts at byte {0} is not closed")]
    OpenQuote(usize),
    #[error("a comment that starts at byte {0} is not closed")]
    OpenComment(usize),
    #[error("an executable comment at byte {0} is inside another one")]
    NestedExecutable(usize),
}

/// Bytes that make up unquoted identifiers (and keywords, numbers): a table, for the hot loop.
static IDENT: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
        c += 1;
    }
    t
};

#[inline]
fn is_ident_byte(c: u8) -> bool {
    IDENT[c as usize]
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Tokenizes `text` under `opts`.
pub fn lex(text: &str, opts: Options) -> Result<Lexed<'_>, LexError> {
    let mut tokens = Vec::with_capacity(text.len() / 4 + 4);
    let mut out = lex_with(text, opts, &mut |t| tokens.push(t))?;
    out.tokens = tokens;
    Ok(out)
}

/// Tokenizes `text` under `opts`, handing each token to `sink` as it is read (no token list
/// is built: the shape cache's hot path). The returned [`Lexed`] has no tokens, only what
/// could make the server read the text otherwise.
pub fn lex_with<'a, F: FnMut(Token<'a>)>(
    text: &'a str,
    opts: Options,
    sink: &mut F,
) -> Result<Lexed<'a>, LexError> {
    let b = text.as_bytes();
    let mut out = Lexed::default();
    // The last two tokens handed out (a name after `ident.` may start with digits).
    let mut prev: [Option<Token<'a>>; 2] = [None, None];
    let mut emit = |t: Token<'a>, prev: &mut [Option<Token<'a>>; 2]| {
        prev[0] = prev[1].replace(t);
        sink(t);
    };
    let mut i = 0;
    // Inside an executable comment that is being run: `Some(versioned)`.
    let mut exec: Option<bool> = None;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if is_space(c) {
            i += 1;
            continue;
        }
        let slash = opts.slash_comments && c == b'/' && b.get(i + 1) == Some(&b'/');
        out.slash_comment |= slash;
        if c == b'#'
            || slash
            || (c == b'-'
                && b.get(i + 1) == Some(&b'-')
                && b.get(i + 2).is_none_or(|&n| is_space(n) || n < 0x20))
        {
            i = memchr(b'\n', &b[i..]).map_or(b.len(), |n| i + n + 1);
            continue;
        }
        if c == b'*' && b.get(i + 1) == Some(&b'/') {
            if let Some(versioned) = exec.take() {
                if versioned {
                    emit(
                        Token {
                            kind: Kind::VersionedClose,
                            text: &text[i..i + 2],
                            start,
                        },
                        &mut prev,
                    );
                }
                i += 2;
                continue;
            }
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mariadb = b.get(i + 2) == Some(&b'M') && b.get(i + 3) == Some(&b'!');
            let bang = b.get(i + 2) == Some(&b'!') || mariadb;
            if bang {
                if exec.is_some() {
                    return Err(LexError::NestedExecutable(start));
                }
                let mut j = i + if mariadb { 4 } else { 3 };
                let digits = j;
                while j < b.len() && b[j].is_ascii_digit() && j - digits < 6 {
                    j += 1;
                }
                let version = text[digits..j].parse::<u32>().ok();
                let versioned = version.is_some() || mariadb;
                if versioned {
                    let v = version.unwrap_or(1);
                    if !out.versions.contains(&v) {
                        out.versions.push(v);
                    }
                    if opts.skip_versions_above.is_some_and(|max| v > max) {
                        // The server skips it as a plain comment, to the first `*/`.
                        i = find(b"*/", &b[j..])
                            .map(|n| j + n + 2)
                            .ok_or(LexError::OpenComment(start))?;
                        continue;
                    }
                    emit(
                        Token {
                            kind: Kind::VersionedOpen,
                            text: &text[i..j],
                            start,
                        },
                        &mut prev,
                    );
                }
                exec = Some(versioned);
                i = j;
                continue;
            }
            i = find(b"*/", &b[i + 2..])
                .map(|n| i + 2 + n + 2)
                .ok_or(LexError::OpenComment(start))?;
            continue;
        }
        macro_rules! push {
            ($out:expr, $kind:expr, $end:expr) => {
                emit(
                    Token {
                        kind: $kind,
                        text: &text[start..$end],
                        start,
                    },
                    &mut prev,
                )
            };
        }
        // Quoted runs.
        if c == b'\'' || c == b'"' || c == b'`' {
            let end = quoted(b, i, opts.backslash_escapes, &mut out)?;
            let kind = match c {
                b'\'' => Kind::String,
                b'"' => Kind::DqString,
                _ => Kind::Quoted,
            };
            push!(&mut out, kind, end);
            i = end;
            continue;
        }
        // N'…', x'…', b'…'
        if matches!(c, b'N' | b'n' | b'x' | b'X' | b'b' | b'B') && b.get(i + 1) == Some(&b'\'') {
            let end = quoted(b, i + 1, opts.backslash_escapes, &mut out)?;
            let kind = if matches!(c, b'N' | b'n') {
                Kind::String
            } else {
                Kind::Number
            };
            push!(&mut out, kind, end);
            i = end;
            continue;
        }
        if c == b'@' {
            i += 1;
            if b.get(i) == Some(&b'@') {
                i += 1;
            }
            loop {
                match b.get(i) {
                    Some(b'\'' | b'"' | b'`') => {
                        i = quoted(b, i, opts.backslash_escapes, &mut out)?;
                    }
                    Some(&n) if is_ident_byte(n) || n == b'.' => {
                        while i < b.len() && (is_ident_byte(b[i]) || b[i] == b'.') {
                            i += 1;
                        }
                    }
                    _ => break,
                }
                if b.get(i) == Some(&b'.') {
                    i += 1;
                    continue;
                }
                break;
            }
            push!(&mut out, Kind::Var, i);
            continue;
        }
        if c == b'?' {
            i += 1;
            push!(&mut out, Kind::Param, i);
            continue;
        }
        if c == b':' && b.get(i + 1).is_some_and(|&n| is_ident_byte(n) || n == b':') {
            i += 1;
            if b[i] == b':' {
                i += 1;
            }
            while i < b.len() && (is_ident_byte(b[i]) || b[i] == b'.') {
                i += 1;
            }
            push!(&mut out, Kind::Param, i);
            continue;
        }
        // A name right after `ident.` is an identifier even when it starts with digits.
        let after_qualifier = c.is_ascii_digit()
            && prev[1].is_some_and(|t| t.is_punct(b'.') && t.start + 1 == i)
            && prev[0]
                .is_some_and(|t| matches!(t.kind, Kind::Word | Kind::Quoted | Kind::DqString));
        if is_ident_byte(c) {
            let mut j = i;
            while j < b.len() && is_ident_byte(b[j]) {
                j += 1;
            }
            if c.is_ascii_digit() && !after_qualifier {
                if let Some(end) = number(b, i) {
                    i = end;
                    push!(&mut out, Kind::Number, i);
                    continue;
                }
            }
            i = j;
            push!(&mut out, Kind::Word, i);
            continue;
        }
        if c == b'.' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
            let prev_is_name = prev[1].is_some_and(|t| {
                t.start + t.text.len() == i
                    && matches!(t.kind, Kind::Word | Kind::Quoted | Kind::DqString)
            });
            if !prev_is_name {
                if let Some(end) = number(b, i) {
                    i = end;
                    push!(&mut out, Kind::Number, i);
                    continue;
                }
            }
        }
        // Anything else is one character of punctuation.
        let len = text[i..].chars().next().map_or(1, char::len_utf8);
        i += len;
        push!(&mut out, Kind::Punct, i);
    }
    // An executable comment left open at the end of the text runs to the end, as in MySQL.
    Ok(out)
}

/// The end of the quoted run that starts at `b[i]`.
fn quoted(b: &[u8], mut i: usize, backslash: bool, out: &mut Lexed<'_>) -> Result<usize, LexError> {
    let start = i;
    let q = b[i];
    i += 1;
    loop {
        let Some(&c) = b.get(i) else {
            return Err(LexError::OpenQuote(start));
        };
        if c == b'\\' && q != b'`' {
            out.backslash = true;
            if i > 0 && b[i - 1] >= 0x80 {
                out.backslash_after_high_byte = true;
            }
            if backslash {
                i += 2;
                continue;
            }
        }
        if c == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return Ok(i + 1);
        }
        i += 1;
    }
}

/// The end of a number starting at `b[i]`, or `None` when the run is an identifier (`1a`).
fn number(b: &[u8], i: usize) -> Option<usize> {
    let ident_end = |mut j: usize| {
        while j < b.len() && is_ident_byte(b[j]) {
            j += 1;
        }
        j
    };
    if b[i] == b'0' && matches!(b.get(i + 1), Some(b'x' | b'b')) {
        let hex = b[i + 1] == b'x';
        let end = ident_end(i);
        let ok = end > i + 2
            && b[i + 2..end].iter().all(|d| {
                if hex {
                    d.is_ascii_hexdigit()
                } else {
                    *d == b'0' || *d == b'1'
                }
            });
        if ok {
            return Some(end);
        }
    }
    let mut j = i;
    while j < b.len() && b[j].is_ascii_digit() {
        j += 1;
    }
    let mut decimal = false;
    if b.get(j) == Some(&b'.') {
        decimal = true;
        j += 1;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        let mut k = j + 1;
        if matches!(b.get(k), Some(b'+' | b'-')) {
            k += 1;
        }
        if b.get(k).is_some_and(u8::is_ascii_digit) {
            while k < b.len() && b[k].is_ascii_digit() {
                k += 1;
            }
            j = k;
        }
    }
    if !decimal && b.get(j).is_some_and(|&c| is_ident_byte(c)) {
        // `1a`, `3t2`: an identifier (a digit run followed by letters). `3.a` is the number
        // `3.` and the word `a`, as MySQL reads it.
        return None;
    }
    Some(j)
}

fn memchr(c: u8, b: &[u8]) -> Option<usize> {
    b.iter().position(|&x| x == c)
}

fn find(needle: &[u8], hay: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<(Kind, &str)> {
        lex(sql, Options::default())
            .expect("lexes")
            .tokens
            .iter()
            .map(|t| (t.kind, t.text))
            .collect()
    }

    #[test]
    fn mysql_lexical_rules() {
        use Kind::*;
        assert_eq!(
            kinds("select `a``b`, 'it''s', \"x\\\"y\" from 3t2 # c\n-- c\n/* c */"),
            vec![
                (Word, "select"),
                (Quoted, "`a``b`"),
                (Punct, ","),
                (String, "'it''s'"),
                (Punct, ","),
                (DqString, "\"x\\\"y\""),
                (Word, "from"),
                (Word, "3t2")
            ]
        );
        assert_eq!(
            kinds("1--2"),
            vec![(Number, "1"), (Punct, "-"), (Punct, "-"), (Number, "2")],
            "`--` without a space is not a comment"
        );
        assert_eq!(
            kinds("db.1t 1.5e3 .5 0x1F x'1f' N'n' _utf8mb4'u' @@session.x @'v' ? :a ::b"),
            vec![
                (Word, "db"),
                (Punct, "."),
                (Word, "1t"),
                (Number, "1.5e3"),
                (Number, ".5"),
                (Number, "0x1F"),
                (Number, "x'1f'"),
                (String, "N'n'"),
                (Word, "_utf8mb4"),
                (String, "'u'"),
                (Var, "@@session.x"),
                (Var, "@'v'"),
                (Param, "?"),
                (Param, ":a"),
                (Param, "::b"),
            ]
        );
        assert_eq!(
            kinds("select 1 /*! from t */ /*+ hint */"),
            vec![(Word, "select"), (Number, "1"), (Word, "from"), (Word, "t")]
        );
        assert_eq!(
            kinds("/*!50700 a /* c */ b */ c"),
            vec![
                (VersionedOpen, "/*!50700"),
                (Word, "a"),
                (Word, "b"),
                (VersionedClose, "*/"),
                (Word, "c")
            ]
        );
    }

    #[test]
    fn other_readings_are_reported() {
        let l = lex("select 'a\\'', /*!80000 1 */ /*M! 2 */", Options::default()).expect("lexes");
        assert!(l.backslash);
        assert_eq!(l.versions, vec![80000, 1]);
        let skipped = lex(
            "select 1 /*!80000 from t */",
            Options {
                skip_versions_above: Some(50700),
                ..Options::default()
            },
        )
        .expect("lexes");
        assert_eq!(skipped.tokens.len(), 2);
        // Without backslash escapes the string ends at the second quote.
        let plain = lex(
            "select 'a\\' -- '",
            Options {
                backslash_escapes: false,
                ..Options::default()
            },
        )
        .expect("lexes");
        assert_eq!(plain.tokens[1].text, "'a\\'");
        assert!(lex("select 'open", Options::default()).is_err());
        assert!(lex("select /* open", Options::default()).is_err());
    }
}
