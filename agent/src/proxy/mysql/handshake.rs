//! The connection phase's messages: HandshakeV10 (the server greeting), SSLRequest,
//! HandshakeResponse41 (the login), AuthSwitchRequest and ERR. Parsers take a whole payload
//! and refuse anything short or inconsistent; builders write what the parsers read.

/// Capability flags (the low 32 bits; MariaDB's extended flags are kept apart).
pub mod cap {
    pub const LONG_PASSWORD: u32 = 1;
    pub const FOUND_ROWS: u32 = 1 << 1;
    pub const LONG_FLAG: u32 = 1 << 2;
    pub const CONNECT_WITH_DB: u32 = 1 << 3;
    pub const NO_SCHEMA: u32 = 1 << 4;
    pub const COMPRESS: u32 = 1 << 5;
    pub const ODBC: u32 = 1 << 6;
    pub const LOCAL_FILES: u32 = 1 << 7;
    pub const IGNORE_SPACE: u32 = 1 << 8;
    pub const PROTOCOL_41: u32 = 1 << 9;
    pub const INTERACTIVE: u32 = 1 << 10;
    pub const SSL: u32 = 1 << 11;
    pub const TRANSACTIONS: u32 = 1 << 13;
    pub const SECURE_CONNECTION: u32 = 1 << 15;
    pub const MULTI_STATEMENTS: u32 = 1 << 16;
    pub const MULTI_RESULTS: u32 = 1 << 17;
    pub const PS_MULTI_RESULTS: u32 = 1 << 18;
    pub const PLUGIN_AUTH: u32 = 1 << 19;
    pub const CONNECT_ATTRS: u32 = 1 << 20;
    pub const PLUGIN_AUTH_LENENC: u32 = 1 << 21;
    pub const SESSION_TRACK: u32 = 1 << 23;
    pub const DEPRECATE_EOF: u32 = 1 << 24;
    pub const ZSTD: u32 = 1 << 26;

    /// MariaDB's COM_MULTI (extended flag): commands inside a command; never advertised.
    pub const MARIADB_COM_MULTI: u32 = 1 << 1;
}

/// Why a handshake message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: {detail}")]
pub struct Malformed {
    pub what: &'static str,
    pub detail: &'static str,
}

struct Cursor<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn err(&self, detail: &'static str) -> Malformed {
        Malformed {
            what: self.what,
            detail,
        }
    }
    fn take(&mut self, n: usize, detail: &'static str) -> Result<&'a [u8], Malformed> {
        if self.b.len() < n {
            return Err(self.err(detail));
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u8(&mut self, d: &'static str) -> Result<u8, Malformed> {
        Ok(self.take(1, d)?[0])
    }
    fn u16(&mut self, d: &'static str) -> Result<u16, Malformed> {
        let b = self.take(2, d)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, d: &'static str) -> Result<u32, Malformed> {
        let b = self.take(4, d)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A NUL-terminated string; with `eof_ok`, the end of the payload also ends it.
    fn cstr(&mut self, d: &'static str, eof_ok: bool) -> Result<&'a [u8], Malformed> {
        match self.b.iter().position(|&c| c == 0) {
            Some(i) => {
                let s = &self.b[..i];
                self.b = &self.b[i + 1..];
                Ok(s)
            }
            None if eof_ok => Ok(std::mem::take(&mut self.b)),
            None => Err(self.err(d)),
        }
    }
    fn lenenc(&mut self, d: &'static str) -> Result<u64, Malformed> {
        match self.u8(d)? {
            n @ 0..=0xfa => Ok(u64::from(n)),
            0xfc => Ok(u64::from(self.u16(d)?)),
            0xfd => {
                let b = self.take(3, d)?;
                Ok(u64::from(b[0]) | u64::from(b[1]) << 8 | u64::from(b[2]) << 16)
            }
            0xfe => {
                let b = self.take(8, d)?;
                Ok(u64::from_le_bytes(b.try_into().map_err(|_| self.err(d))?))
            }
            _ => Err(self.err(d)),
        }
    }
}

fn put_lenenc(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=0xfa => out.push(n as u8),
        0xfb..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// HandshakeV10, the first packet a server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub server_version: Vec<u8>,
    pub connection_id: u32,
    /// The whole challenge (both parts, without a trailing NUL).
    pub salt: Vec<u8>,
    pub capabilities: u32,
    pub charset: u8,
    pub status: u16,
    /// MariaDB's extended capabilities (in the reserved bytes, when CLIENT_MYSQL is off).
    pub mariadb_ext: u32,
    pub auth_plugin: Vec<u8>,
}

impl Greeting {
    pub fn parse(p: &[u8]) -> Result<Self, Malformed> {
        let mut c = Cursor {
            b: p,
            what: "server greeting",
        };
        if c.u8("empty")? != 10 {
            return Err(c.err("protocol version is not 10"));
        }
        let server_version = c.cstr("server version is not terminated", false)?.to_vec();
        let connection_id = c.u32("no connection id")?;
        let mut salt = c.take(8, "short challenge")?.to_vec();
        c.take(1, "no filler")?;
        let low = c.u16("no capabilities")?;
        let charset = c.u8("no character set")?;
        let status = c.u16("no status")?;
        let high = c.u16("no upper capabilities")?;
        let capabilities = u32::from(low) | u32::from(high) << 16;
        let auth_len = usize::from(c.u8("no challenge length")?);
        let reserved = c.take(10, "short reserved bytes")?;
        let mariadb_ext = if capabilities & cap::LONG_PASSWORD == 0 {
            u32::from_le_bytes([reserved[6], reserved[7], reserved[8], reserved[9]])
        } else {
            0
        };
        if capabilities & cap::SECURE_CONNECTION != 0 {
            let n = auth_len.saturating_sub(8).max(13);
            let part = c.take(n, "short second challenge part")?;
            // The second part ends in a NUL that is not part of the challenge.
            let part = part.strip_suffix(&[0]).unwrap_or(part);
            salt.extend_from_slice(part);
        }
        let auth_plugin = if capabilities & cap::PLUGIN_AUTH != 0 {
            c.cstr("", true)?.to_vec()
        } else {
            b"mysql_native_password".to_vec()
        };
        Ok(Greeting {
            server_version,
            connection_id,
            salt,
            capabilities,
            charset,
            status,
            mariadb_ext,
            auth_plugin,
        })
    }

    /// The payload. The challenge must be 20 bytes or longer (as every server sends).
    pub fn encode(&self) -> Vec<u8> {
        let mut p = vec![10];
        p.extend_from_slice(&self.server_version);
        p.push(0);
        p.extend_from_slice(&self.connection_id.to_le_bytes());
        p.extend_from_slice(&self.salt[..8]);
        p.push(0);
        p.extend_from_slice(&(self.capabilities as u16).to_le_bytes());
        p.push(self.charset);
        p.extend_from_slice(&self.status.to_le_bytes());
        p.extend_from_slice(&((self.capabilities >> 16) as u16).to_le_bytes());
        p.push(if self.capabilities & cap::PLUGIN_AUTH != 0 {
            (self.salt.len() + 1) as u8
        } else {
            0
        });
        p.extend_from_slice(&[0; 6]);
        if self.capabilities & cap::LONG_PASSWORD == 0 {
            p.extend_from_slice(&self.mariadb_ext.to_le_bytes());
        } else {
            p.extend_from_slice(&[0; 4]);
        }
        if self.capabilities & cap::SECURE_CONNECTION != 0 {
            let rest = &self.salt[8..];
            p.extend_from_slice(rest);
            // At least 12 bytes, then the NUL.
            p.resize(p.len() + 13 - rest.len().min(12), 0);
        }
        if self.capabilities & cap::PLUGIN_AUTH != 0 {
            p.extend_from_slice(&self.auth_plugin);
            p.push(0);
        }
        p
    }
}

/// An SSLRequest: the login's first 32 bytes, with CLIENT_SSL, and nothing after.
pub fn is_ssl_request(p: &[u8]) -> bool {
    p.len() == 32 && u32::from_le_bytes([p[0], p[1], p[2], p[3]]) & cap::SSL != 0
}

/// HandshakeResponse41, the client's login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub capabilities: u32,
    pub max_packet: u32,
    pub charset: u8,
    pub mariadb_ext: u32,
    pub user: Vec<u8>,
    pub auth_response: Vec<u8>,
    pub database: Option<Vec<u8>>,
    pub auth_plugin: Option<Vec<u8>>,
    /// The connection attributes, as sent (without their length prefix).
    pub attributes: Option<Vec<u8>>,
}

impl Login {
    pub fn parse(p: &[u8]) -> Result<Self, Malformed> {
        let mut c = Cursor {
            b: p,
            what: "login",
        };
        let capabilities = c.u32("short capabilities")?;
        if capabilities & cap::PROTOCOL_41 == 0 {
            return Err(c.err("pre-4.1 protocol (HandshakeResponse320) is not supported"));
        }
        let max_packet = c.u32("no max packet size")?;
        let charset = c.u8("no character set")?;
        let filler = c.take(23, "short filler")?;
        let mariadb_ext = if capabilities & cap::LONG_PASSWORD == 0 {
            u32::from_le_bytes([filler[19], filler[20], filler[21], filler[22]])
        } else {
            0
        };
        let user = c.cstr("user name is not terminated", false)?.to_vec();
        let auth_response = if capabilities & cap::PLUGIN_AUTH_LENENC != 0 {
            let n = c.lenenc("bad auth response length")?;
            let n = usize::try_from(n).map_err(|_| c.err("auth response length"))?;
            c.take(n, "short auth response")?.to_vec()
        } else if capabilities & cap::SECURE_CONNECTION != 0 {
            let n = usize::from(c.u8("no auth response length")?);
            c.take(n, "short auth response")?.to_vec()
        } else {
            c.cstr("auth response is not terminated", false)?.to_vec()
        };
        let database = if capabilities & cap::CONNECT_WITH_DB != 0 && !c.b.is_empty() {
            Some(c.cstr("", true)?.to_vec())
        } else {
            None
        };
        let auth_plugin = if capabilities & cap::PLUGIN_AUTH != 0 && !c.b.is_empty() {
            Some(c.cstr("", true)?.to_vec())
        } else {
            None
        };
        let attributes = if capabilities & cap::CONNECT_ATTRS != 0 && !c.b.is_empty() {
            let n = c.lenenc("bad attributes length")?;
            let n = usize::try_from(n).map_err(|_| c.err("attributes length"))?;
            Some(c.take(n, "short attributes")?.to_vec())
        } else {
            None
        };
        Ok(Login {
            capabilities,
            max_packet,
            charset,
            mariadb_ext,
            user,
            auth_response,
            database,
            auth_plugin,
            attributes,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let caps = self.capabilities;
        let mut p = Vec::with_capacity(128);
        p.extend_from_slice(&caps.to_le_bytes());
        p.extend_from_slice(&self.max_packet.to_le_bytes());
        p.push(self.charset);
        p.extend_from_slice(&[0; 19]);
        if caps & cap::LONG_PASSWORD == 0 {
            p.extend_from_slice(&self.mariadb_ext.to_le_bytes());
        } else {
            p.extend_from_slice(&[0; 4]);
        }
        p.extend_from_slice(&self.user);
        p.push(0);
        if caps & cap::PLUGIN_AUTH_LENENC != 0 {
            put_lenenc(&mut p, self.auth_response.len() as u64);
            p.extend_from_slice(&self.auth_response);
        } else if caps & cap::SECURE_CONNECTION != 0 {
            // The parser took at most 255 bytes here; a longer response needs LENENC.
            let n = self.auth_response.len().min(255);
            p.push(n as u8);
            p.extend_from_slice(&self.auth_response[..n]);
        } else {
            p.extend_from_slice(&self.auth_response);
            p.push(0);
        }
        if caps & cap::CONNECT_WITH_DB != 0 {
            p.extend_from_slice(self.database.as_deref().unwrap_or_default());
            p.push(0);
        }
        if caps & cap::PLUGIN_AUTH != 0 {
            p.extend_from_slice(self.auth_plugin.as_deref().unwrap_or_default());
            p.push(0);
        }
        if caps & cap::CONNECT_ATTRS != 0 {
            let a = self.attributes.as_deref().unwrap_or_default();
            put_lenenc(&mut p, a.len() as u64);
            p.extend_from_slice(a);
        }
        p
    }
}

/// Client authentication plugins that answer with the password itself (over a connection the
/// client takes for secure, which towards vtguard it is): `mysql_clear_password` (and the
/// server plugins that use it, e.g. LDAP simple bind), MariaDB's PAM `dialog`, and
/// `sha256_password`, which sends it in clear over TLS. (`caching_sha2_password` answers with
/// a scramble; only its full authentication, [`FULL_AUTHENTICATION`], sends the password.)
pub fn sends_password_in_clear(plugin: &[u8]) -> bool {
    matches!(
        plugin,
        b"mysql_clear_password" | b"dialog" | b"sha256_password"
    )
}

/// The plugin an AuthSwitchRequest payload (`0xfe`, plugin name, NUL, data) names.
pub fn auth_switch_plugin(p: &[u8]) -> Option<&[u8]> {
    let rest = p.strip_prefix(&[0xfe])?;
    Some(&rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())])
}

/// caching_sha2_password's AuthMoreData "perform full authentication": the client answers
/// with its password in clear when the connection is secure.
pub const FULL_AUTHENTICATION: [u8; 2] = [0x01, 0x04];

/// An AuthSwitchRequest: authenticate again with `plugin` against `data`.
pub fn auth_switch(plugin: &[u8], data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(2 + plugin.len() + data.len() + 1);
    p.push(0xfe);
    p.extend_from_slice(plugin);
    p.push(0);
    p.extend_from_slice(data);
    // Servers end the challenge with a NUL, and clients expect it.
    p.push(0);
    p
}

/// An ERR payload; the SQLSTATE marker is written when the client speaks protocol 4.1.
pub fn err(code: u16, sqlstate: &str, message: &str, protocol_41: bool) -> Vec<u8> {
    let mut p = Vec::with_capacity(9 + message.len());
    p.push(0xff);
    p.extend_from_slice(&code.to_le_bytes());
    if protocol_41 {
        p.push(b'#');
        let s = sqlstate.as_bytes();
        p.extend((0..5).map(|i| s.get(i).copied().unwrap_or(b'0')));
    }
    p.extend_from_slice(message.as_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A MariaDB 10.11 greeting, as captured on the wire.
    fn mariadb_greeting() -> Greeting {
        Greeting {
            server_version: b"5.5.5-10.11.6-MariaDB-0+deb12u1".to_vec(),
            connection_id: 31,
            salt: b"abcdefgh0123456789AB".to_vec(),
            capabilities: 0xf7fe_f7fe & !cap::LONG_PASSWORD,
            charset: 45,
            status: 2,
            mariadb_ext: 0x1d,
            auth_plugin: b"mysql_native_password".to_vec(),
        }
    }

    #[test]
    fn greeting_round_trips_and_every_truncation_is_refused() {
        let g = mariadb_greeting();
        let wire = g.encode();
        assert_eq!(Greeting::parse(&wire).expect("parse"), g);
        // Truncated anywhere before the plugin name: refused (the name may lack its NUL).
        let plugin_at = wire.len() - g.auth_plugin.len() - 1;
        for cut in 0..plugin_at {
            assert!(Greeting::parse(&wire[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = wire.clone();
        bad[0] = 9;
        assert!(Greeting::parse(&bad).is_err());
        let mut mysql = g.clone();
        mysql.capabilities |= cap::LONG_PASSWORD;
        mysql.mariadb_ext = 0;
        assert_eq!(Greeting::parse(&mysql.encode()).expect("mysql"), mysql);
    }

    fn login() -> Login {
        Login {
            capabilities: cap::PROTOCOL_41
                | cap::SECURE_CONNECTION
                | cap::PLUGIN_AUTH
                | cap::PLUGIN_AUTH_LENENC
                | cap::CONNECT_WITH_DB
                | cap::CONNECT_ATTRS
                | cap::SSL,
            max_packet: 1 << 24,
            charset: 33,
            mariadb_ext: 0x14,
            user: b"vtgate client 1".to_vec(),
            auth_response: (0..20).collect(),
            database: Some(b"vt".to_vec()),
            auth_plugin: Some(b"mysql_native_password".to_vec()),
            attributes: Some(b"\x04_pid\x0212".to_vec()),
        }
    }

    #[test]
    fn login_round_trips_in_each_auth_encoding() {
        let l = login();
        assert_eq!(Login::parse(&l.encode()).expect("lenenc"), l);
        let mut s = l.clone();
        s.capabilities &= !cap::PLUGIN_AUTH_LENENC;
        assert_eq!(Login::parse(&s.encode()).expect("secure"), s);
        let mut old = s.clone();
        old.capabilities &= !(cap::SECURE_CONNECTION | cap::CONNECT_ATTRS);
        old.auth_response = b"x".to_vec();
        old.attributes = None;
        assert_eq!(Login::parse(&old.encode()).expect("cstr"), old);
        let mut mysql = l.clone();
        mysql.capabilities |= cap::LONG_PASSWORD;
        mysql.mariadb_ext = 0;
        assert_eq!(Login::parse(&mysql.encode()).expect("mysql"), mysql);
    }

    #[test]
    fn truncated_or_inconsistent_logins_are_refused() {
        let wire = login().encode();
        // Up to and including the auth response, any cut is an error; after it, the optional
        // fields may end early (older clients), but a cut inside the attributes is an error.
        let user_end = 32 + b"vtgate client 1".len() + 1;
        for cut in 0..user_end + 21 {
            assert!(Login::parse(&wire[..cut]).is_err(), "cut at {cut}");
        }
        for cut in wire.len() - 8..wire.len() {
            assert!(Login::parse(&wire[..cut]).is_err(), "cut at {cut}");
        }
        let mut w = wire.clone();
        w[user_end] = 0xfb; // not a length
        assert!(Login::parse(&w).is_err());
        let mut w = wire.clone();
        w[user_end] = 0xfe; // 8-byte length, far past the end
        assert!(Login::parse(&w).is_err());
        let mut pre41 = wire;
        pre41[1] &= !((cap::PROTOCOL_41 >> 8) as u8);
        let e = Login::parse(&pre41).expect_err("pre-4.1");
        assert!(e.to_string().contains("pre-4.1"), "{e}");
    }

    #[test]
    fn ssl_request_is_recognized() {
        let l = login();
        assert!(is_ssl_request(&l.encode()[..32]));
        assert!(!is_ssl_request(&l.encode()));
        let mut plain = l.encode();
        plain[1] &= !((cap::SSL >> 8) as u8);
        assert!(!is_ssl_request(&plain[..32]));
    }

    #[test]
    fn err_packet_has_the_sqlstate_marker_only_for_protocol_41() {
        let e = err(1142, "42000", "denied", true);
        assert_eq!(e, b"\xff\x76\x04#42000denied");
        assert_eq!(err(1045, "28000", "no", false), b"\xff\x15\x04no");
    }

    #[test]
    fn auth_switch_ends_the_challenge_with_nul() {
        assert_eq!(
            auth_switch(b"mysql_native_password", b"0123"),
            b"\xfemysql_native_password\x000123\x00"
        );
    }
}
