//! Where each response ends in the upstream's byte stream, so that an answer vtguard gives
//! itself (a denied command's ERR) goes to the client after the responses to the commands
//! sent before it, never ahead of them: clients that pipeline commands match responses to
//! commands by order.
//!
//! The relay forwards upstream bytes in whatever chunks they arrive; [`Responses`] follows
//! the packets in them (first payload bytes only, nothing is buffered) and, for the command
//! at the head of the queue, the shape of its response: OK, ERR, a LOCAL INFILE request, one
//! or more result sets (text or binary, with or without EOF packets, chained by
//! SERVER_MORE_RESULTS_EXISTS), a COM_STMT_PREPARE answer with its parameter and column
//! definitions, and so on. Commands without a response (COM_STMT_CLOSE,
//! COM_STMT_SEND_LONG_DATA, COM_QUIT) are never queued.

use std::collections::VecDeque;

use super::handshake::cap;

/// SERVER_MORE_RESULTS_EXISTS: another result follows this one.
const MORE_RESULTS: u16 = 0x0008;
/// SERVER_STATUS_CURSOR_EXISTS: a statement's rows wait for COM_STMT_FETCH.
const CURSOR_EXISTS: u16 = 0x0040;
/// Payload bytes kept from the start of each packet: enough for every field read here.
const PREFIX: usize = 24;

/// What the response to a command looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// COM_QUERY, COM_STMT_EXECUTE, COM_PROCESS_INFO: OK, ERR, LOCAL INFILE, result sets.
    Results,
    /// COM_STMT_PREPARE: OK with counts, then parameter and column definitions.
    Prepare,
    /// COM_FIELD_LIST: column definitions up to an EOF.
    FieldList,
    /// COM_STMT_FETCH: rows up to an EOF.
    Rows,
    /// Everything else: one packet (OK, ERR, EOF, or COM_STATISTICS's text).
    One,
}

impl Expect {
    /// The response `command` gets; `None` for commands the server does not answer.
    pub fn of(command: u8) -> Option<Self> {
        Some(match command {
            0x01 | 0x18 | 0x19 => return None, // QUIT, STMT_SEND_LONG_DATA, STMT_CLOSE
            0x03 | 0x17 | 0x0a => Self::Results, // QUERY, STMT_EXECUTE, PROCESS_INFO
            0x16 => Self::Prepare,
            0x04 => Self::FieldList,
            0x1c => Self::Rows, // STMT_FETCH
            _ => Self::One,
        })
    }
}

/// Where a response is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Its first packet (or the first of the next result) is next.
    Start(Expect),
    /// `left` more packets of definitions (columns, or a prepare's parameters and columns,
    /// with their EOFs without DEPRECATE_EOF); then rows when `rows`, else the end.
    Defs { left: u64, rows: bool },
    /// Rows (or COM_FIELD_LIST's definitions) up to an EOF / OK terminator, or an ERR.
    Rows,
    /// The client sends the file the server asked for; the server's OK or ERR follows.
    Infile,
}

/// An entry of the queue: a response the upstream owes, or vtguard's own answer waiting for
/// the responses before it.
#[derive(Debug)]
enum Pending {
    Upstream(Expect),
    /// A whole ERR packet (header included) for the client.
    Local(Vec<u8>),
}

/// What happened in a chunk of upstream bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// The response at the head of the queue ended with the byte before `at` (an offset into
    /// the chunk); `answers` are vtguard's own that were queued behind it, due now.
    Ended { at: usize, answers: Vec<Vec<u8>> },
    /// The server asked for a local file (LOAD DATA LOCAL): the client's next packets are the
    /// file's.
    Infile,
}

/// The queue of responses and the state of the one at its head.
#[derive(Debug)]
pub struct Responses {
    deprecate_eof: bool,
    queue: VecDeque<Pending>,
    /// The head response's state, once its first packet was seen.
    state: Option<State>,
    // The packet being read.
    header: [u8; 4],
    have_header: usize,
    len: usize,
    /// Payload bytes of this packet still to come.
    remaining: usize,
    prefix: [u8; PREFIX],
    have_prefix: usize,
    /// This packet continues one of 0xffffff bytes: not a packet of its own.
    continuation: bool,
    /// This packet was interpreted already.
    seen: bool,
    /// The head response ends with this packet.
    ends: bool,
}

impl Responses {
    /// For a session with `capabilities` (the ones the upstream and client agreed on).
    pub fn new(capabilities: u32) -> Self {
        Self {
            deprecate_eof: capabilities & cap::DEPRECATE_EOF != 0,
            queue: VecDeque::new(),
            state: None,
            header: [0; 4],
            have_header: 0,
            len: 0,
            remaining: 0,
            prefix: [0; PREFIX],
            have_prefix: 0,
            continuation: false,
            seen: false,
            ends: false,
        }
    }

    /// Whether the upstream owes no response: vtguard's own answer can go out at once.
    pub fn idle(&self) -> bool {
        self.queue.is_empty()
    }

    /// A command went upstream that gets `expect` as its response.
    pub fn expect(&mut self, expect: Expect) {
        self.queue.push_back(Pending::Upstream(expect));
    }

    /// vtguard's answer to a command, due after the responses queued before it.
    pub fn answer_later(&mut self, packet: Vec<u8>) {
        self.queue.push_back(Pending::Local(packet));
    }

    /// Follows `chunk` of the upstream's stream; `on(event)` runs for each response that ends
    /// in it and for each LOCAL INFILE request.
    pub fn feed(&mut self, chunk: &[u8], mut on: impl FnMut(Event)) {
        let mut i = 0;
        while i < chunk.len() {
            if self.have_header < 4 {
                let n = (4 - self.have_header).min(chunk.len() - i);
                self.header[self.have_header..self.have_header + n]
                    .copy_from_slice(&chunk[i..i + n]);
                self.have_header += n;
                i += n;
                if self.have_header < 4 {
                    continue;
                }
                self.len = usize::from(self.header[0])
                    | usize::from(self.header[1]) << 8
                    | usize::from(self.header[2]) << 16;
                self.remaining = self.len;
                self.have_prefix = 0;
                self.seen = false;
                self.ends = false;
            }
            let n = self.remaining.min(chunk.len() - i);
            let take = n.min(PREFIX - self.have_prefix);
            self.prefix[self.have_prefix..self.have_prefix + take]
                .copy_from_slice(&chunk[i..i + take]);
            self.have_prefix += take;
            self.remaining -= n;
            i += n;
            if !self.seen && (self.have_prefix == PREFIX || self.remaining == 0) {
                self.seen = true;
                if !self.continuation && self.packet() {
                    on(Event::Infile);
                }
            }
            if self.remaining == 0 {
                self.continuation = self.len == 0xff_ffff;
                self.have_header = 0;
                if self.ends && !self.continuation {
                    self.ends = false;
                    self.state = None;
                    self.queue.pop_front();
                    // The queue's head is again a response the upstream owes (or nothing).
                    let mut answers = Vec::new();
                    while let Some(Pending::Local(_)) = self.queue.front() {
                        if let Some(Pending::Local(p)) = self.queue.pop_front() {
                            answers.push(p);
                        }
                    }
                    on(Event::Ended { at: i, answers });
                }
            }
        }
    }

    /// Interprets the packet whose prefix is in; returns whether it asks for a local file.
    fn packet(&mut self) -> bool {
        let state = match self.state {
            Some(s) => s,
            None => match self.queue.front() {
                Some(Pending::Upstream(e)) => State::Start(*e),
                // Nothing asked for it (the server closing with an ERR, say): relayed as is.
                _ => return false,
            },
        };
        let p = &self.prefix[..self.have_prefix];
        let first = p.first().copied();
        let err = first == Some(0xff);
        // An EOF packet, or the OK packet that stands for one with DEPRECATE_EOF.
        let eof = first == Some(0xfe) && self.len < 0xff_ffff;
        let mut infile = false;
        let next = match state {
            State::Start(Expect::One) => None,
            State::Start(Expect::Results) | State::Infile => match first {
                Some(0x00) => self.more(ok_status(p)),
                Some(0xfb) if state != State::Infile => {
                    infile = true;
                    Some(State::Infile)
                }
                Some(0xff) | None => None,
                _ if state == State::Infile => None,
                _ => {
                    // A server sends 1 to 4096 columns; a malformed count (0, or up to
                    // 2^64 - 1) must neither wrap nor leave a count of 0 definitions to wait for.
                    let columns = lenenc(p).map_or(0, |(n, _)| n);
                    let eof = u64::from(!self.deprecate_eof);
                    defs(columns.saturating_add(eof), true)
                }
            },
            State::Start(Expect::Prepare) => match first {
                Some(0x00) if p.len() >= 9 => {
                    let columns = u64::from(u16::from_le_bytes([p[5], p[6]]));
                    let params = u64::from(u16::from_le_bytes([p[7], p[8]]));
                    let eof = |n: u64| u64::from(n > 0 && !self.deprecate_eof);
                    defs(params + eof(params) + columns + eof(columns), false)
                }
                _ => None,
            },
            State::Start(Expect::FieldList | Expect::Rows) | State::Rows => {
                if err {
                    None
                } else if eof {
                    let status = if self.deprecate_eof {
                        ok_status(p)
                    } else {
                        eof_status(p)
                    };
                    match state {
                        State::Rows => self.more(status),
                        _ => None,
                    }
                } else {
                    Some(State::Rows)
                }
            }
            State::Defs { left, rows } => match left {
                _ if err => None,
                // The EOF after the columns of a statement executed with a cursor: its rows
                // come with COM_STMT_FETCH.
                1 if rows && eof && eof_status(p).is_some_and(|s| s & CURSOR_EXISTS != 0) => None,
                1 if rows => Some(State::Rows),
                1 => None,
                // Never 0 (see `defs`).
                n => Some(State::Defs { left: n - 1, rows }),
            },
        };
        match next {
            Some(s) => self.state = Some(s),
            None => self.ends = true,
        }
        infile
    }

    /// After a result with `status`: the next result, or the end.
    fn more(&self, status: Option<u16>) -> Option<State> {
        status
            .filter(|s| s & MORE_RESULTS != 0)
            .map(|_| State::Start(Expect::Results))
    }
}

/// The state after a packet announcing `left` definition packets (then rows when `rows`):
/// with none to come, the rows follow at once, or the response ends with this packet.
fn defs(left: u64, rows: bool) -> Option<State> {
    match left {
        0 if rows => Some(State::Rows),
        0 => None,
        left => Some(State::Defs { left, rows }),
    }
}

/// A length-encoded integer at the start of `p`, and its size.
fn lenenc(p: &[u8]) -> Option<(u64, usize)> {
    let (n, size) = match *p.first()? {
        b @ 0..=0xfa => return Some((u64::from(b), 1)),
        0xfc => (2, 3),
        0xfd => (3, 4),
        0xfe => (8, 9),
        _ => return None,
    };
    let bytes = p.get(1..=n)?;
    let mut v = [0u8; 8];
    v[..n].copy_from_slice(bytes);
    Some((u64::from_le_bytes(v), size))
}

/// The status flags of an OK packet (header, affected rows, last insert id, status).
fn ok_status(p: &[u8]) -> Option<u16> {
    let rest = p.get(1..)?;
    let (_, a) = lenenc(rest)?;
    let rest = rest.get(a..)?;
    let (_, b) = lenenc(rest)?;
    let s = rest.get(b..b + 2)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

/// The status flags of an EOF packet (0xfe, warnings, status).
fn eof_status(p: &[u8]) -> Option<u16> {
    let s = p.get(3..5)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::mysql::packet;

    fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        packet::encode(&mut out, seq, payload);
        out
    }

    fn ok(status: u16) -> Vec<u8> {
        let mut p = vec![0x00, 0, 0];
        p.extend_from_slice(&status.to_le_bytes());
        p.extend_from_slice(&[0, 0]);
        p
    }

    fn eof(status: u16) -> Vec<u8> {
        let mut p = vec![0xfe, 0, 0];
        p.extend_from_slice(&status.to_le_bytes());
        p
    }

    fn ok_eof(status: u16) -> Vec<u8> {
        let mut p = ok(status);
        p[0] = 0xfe;
        p
    }

    /// A text result set of `rows` one-column rows, ending with `status`.
    fn result_set(deprecate_eof: bool, rows: usize, status: u16) -> Vec<u8> {
        let mut out = pkt(1, &[1]);
        out.extend(pkt(
            2,
            b"\x03def\x00\x00\x00\x01a\x00\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00",
        ));
        if !deprecate_eof {
            out.extend(pkt(3, &eof(0)));
        }
        for r in 0..rows {
            out.extend(pkt(4, format!("\x02{:02}", r % 100).as_bytes()));
        }
        out.extend(pkt(
            5,
            &if deprecate_eof {
                ok_eof(status)
            } else {
                eof(status)
            },
        ));
        out
    }

    /// Feeds `stream` `step` bytes at a time; returns where responses ended (stream offsets)
    /// and the answers released there, and how many LOCAL INFILE requests were seen.
    fn run(r: &mut Responses, stream: &[u8], step: usize) -> (Vec<(usize, usize)>, usize) {
        let (mut ends, mut infile) = (Vec::new(), 0);
        for (k, chunk) in stream.chunks(step).enumerate() {
            r.feed(chunk, |e| match e {
                Event::Ended { at, answers } => ends.push((k * step + at, answers.len())),
                Event::Infile => infile += 1,
            });
        }
        (ends, infile)
    }

    #[test]
    fn responses_end_where_they_end_whatever_the_chunks() {
        for deprecate_eof in [false, true] {
            let caps = if deprecate_eof { cap::DEPRECATE_EOF } else { 0 };
            // A multi-result query (two result sets and an OK), a denied command's answer, an
            // OK, a prepare with 2 parameters and 1 column, a field list, a ping.
            let first = [
                result_set(deprecate_eof, 3, MORE_RESULTS),
                result_set(deprecate_eof, 0, MORE_RESULTS),
                pkt(7, &ok(0)),
            ]
            .concat();
            let second = pkt(1, &ok(0));
            let mut prepare = vec![0x00, 1, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0];
            prepare.truncate(12);
            let mut third = pkt(1, &prepare);
            for i in 0..3 {
                third.extend(pkt(2 + i, b"\x03def\x00\x00\x00\x01p\x00"));
                if i == 1 && !deprecate_eof {
                    third.extend(pkt(9, &eof(0)));
                }
            }
            if !deprecate_eof {
                third.extend(pkt(10, &eof(0)));
            }
            let mut fourth = pkt(1, b"\x03def\x00\x00\x00\x01c\x00");
            fourth.extend(pkt(2, &if deprecate_eof { ok_eof(0) } else { eof(0) }));
            let fifth = pkt(1, &ok(0));
            let stream = [&first[..], &second, &third, &fourth, &fifth].concat();
            let bounds: Vec<usize> = [&first, &second, &third, &fourth, &fifth]
                .iter()
                .scan(0, |at, part| {
                    *at += part.len();
                    Some(*at)
                })
                .collect();
            for step in [1, 2, 3, 7, 64, stream.len()] {
                let mut r = Responses::new(caps);
                r.expect(Expect::Results);
                r.answer_later(b"denied".to_vec());
                r.expect(Expect::One);
                r.expect(Expect::Prepare);
                r.expect(Expect::FieldList);
                r.expect(Expect::One);
                let (ends, infile) = run(&mut r, &stream, step);
                assert_eq!(infile, 0);
                let want: Vec<(usize, usize)> = bounds
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (*b, usize::from(i == 0)))
                    .collect();
                assert_eq!(ends, want, "deprecate_eof {deprecate_eof}, step {step}");
                assert!(r.idle());
            }
        }
    }

    #[test]
    fn errors_local_infile_and_rows_that_look_like_terminators() {
        let mut r = Responses::new(cap::DEPRECATE_EOF);
        // An ERR ends a query; a LOCAL INFILE request waits for the OK after the file.
        r.expect(Expect::Results);
        r.expect(Expect::Results);
        let err = pkt(1, b"\xff\x7a\x04#42S02no such table");
        let infile = [pkt(1, b"\xfbfile.csv"), pkt(3, &ok(0))].concat();
        let stream = [err.clone(), infile.clone()].concat();
        let (ends, n) = run(&mut r, &stream, 1);
        assert_eq!(n, 1);
        assert_eq!(ends, vec![(err.len(), 0), (stream.len(), 0)]);
        // A row of 0xffffff bytes starting like a terminator is a row; its continuation is
        // not a packet of its own.
        let mut r = Responses::new(cap::DEPRECATE_EOF);
        r.expect(Expect::Rows);
        let mut big = vec![0xfe; 0xff_ffff];
        big[1] = 0x00;
        let mut first = vec![0xff, 0xff, 0xff, 1];
        first.extend_from_slice(&big);
        let stream = [
            first,
            pkt(2, &[0xfe, 0, 0]),
            pkt(3, b"\x01x"),
            pkt(4, &ok_eof(0)),
        ]
        .concat();
        let (ends, _) = run(&mut r, &stream, 65536);
        assert_eq!(ends, vec![(stream.len(), 0)]);
    }

    /// Findings of the mysql_packets fuzz target (overflow checks on): column counts that do
    /// not describe a result set. A count of 0 (`fc 00 00`) with DEPRECATE_EOF left no
    /// definitions to wait for, and the count of packets left went below zero (a release build
    /// wrapped it to 2^64 - 1 and the response never ended, holding back vtguard's own answers
    /// queued behind it); a count of 2^64 - 1 (`fe ff…ff`) overflowed when its EOF was added.
    #[test]
    fn fuzz_findings() {
        // Zero columns: the rows follow at once, and the terminator ends the response.
        let mut r = Responses::new(cap::DEPRECATE_EOF);
        r.expect(Expect::Results);
        r.answer_later(b"denied".to_vec());
        let stream = [pkt(1, &[0xfc, 0, 0]), pkt(2, b"\x01x"), pkt(3, &ok_eof(0))].concat();
        let (ends, _) = run(&mut r, &stream, 1);
        assert_eq!(ends, vec![(stream.len(), 1)]);
        assert!(r.idle());
        // Without DEPRECATE_EOF, the EOF after the (no) definitions comes first.
        let mut r = Responses::new(0);
        r.expect(Expect::Results);
        let stream = [
            pkt(1, &[0xfc, 0, 0]),
            pkt(2, &eof(0)),
            pkt(3, b"\x01x"),
            pkt(4, &eof(0)),
        ]
        .concat();
        let (ends, _) = run(&mut r, &stream, 3);
        assert_eq!(ends, vec![(stream.len(), 0)]);
        // 2^64 - 1 columns: waited for (saturated), not wrapped to an early end.
        for caps in [0, cap::DEPRECATE_EOF] {
            let mut r = Responses::new(caps);
            r.expect(Expect::Results);
            let mut stream = pkt(1, &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
            for i in 0..4 {
                stream.extend(pkt(2 + i, &eof(0)));
            }
            let (ends, _) = run(&mut r, &stream, 7);
            assert!(ends.is_empty(), "caps {caps:#x}: {ends:?}");
        }
    }

    #[test]
    fn nothing_owed_nothing_held() {
        let mut r = Responses::new(0);
        assert!(r.idle());
        // The server closing with an ERR nobody asked for passes through.
        let (ends, _) = run(&mut r, &pkt(0, b"\xff\x35\x04#08S01Server shutdown"), 5);
        assert!(ends.is_empty());
        assert_eq!(Expect::of(0x19), None, "COM_STMT_CLOSE has no response");
        assert_eq!(
            Expect::of(0x18),
            None,
            "COM_STMT_SEND_LONG_DATA has no response"
        );
        assert_eq!(Expect::of(0x17), Some(Expect::Results));
    }
}
