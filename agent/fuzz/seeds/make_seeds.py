#!/usr/bin/env python3
"""Writes the committed seed corpora, agent/fuzz/seeds/<target>/, from scratch.

Run from anywhere: `python3 agent/fuzz/seeds/make_seeds.py`. Standard library only. The seeds
are realistic inputs for each parser (what vtgate, vttablet clients, MySQL clients and servers,
and operators actually send or write), small (each under 4 KB), and named for what they are, so
that a finding's ancestry reads from the corpus. Byte layouts follow the parsers in agent/src
and the examples in their tests.
"""

import gzip
import os
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
AGENT = os.path.dirname(os.path.dirname(HERE))
ROOT = os.path.dirname(AGENT)
MAX_SEED = 4096


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    if len(data) >= MAX_SEED:
        sys.exit(f"seed {target}/{name} is {len(data)} bytes: keep seeds under {MAX_SEED}")
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data)


# --- protobuf wire format -------------------------------------------------------------------


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def pb_len(number, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def pb_varint(number, value):
    return varint(number << 3) + varint(value)


def caller_id(principal, component="", subcomponent="", groups=()):
    """vtrpc.CallerID: principal 1, component 2, subcomponent 3, groups 4."""
    m = pb_len(1, principal)
    if component:
        m += pb_len(2, component)
    if subcomponent:
        m += pb_len(3, subcomponent)
    for g in groups:
        m += pb_len(4, g)
    return m


def vtgate_caller_id(username, groups=()):
    """query.VTGateCallerID: username 1, groups 2."""
    return pb_len(1, username) + b"".join(pb_len(2, g) for g in groups)


def target(keyspace, shard, tablet_type=1, cell="zone1"):
    """query.Target: keyspace 1, shard 2, tablet_type 3 (1 PRIMARY, 2 REPLICA), cell 4."""
    return pb_len(1, keyspace) + pb_len(2, shard) + pb_varint(3, tablet_type) + pb_len(4, cell)


def bind_variable(name, type_, value):
    """map<string, BindVariable> entry: key 1, value 2 (BindVariable: type 1, value 2)."""
    return pb_len(1, name) + pb_len(2, pb_varint(1, type_) + pb_len(2, value))


def bound_query(sql, binds=()):
    """query.BoundQuery: sql 1, bind_variables 2."""
    return pb_len(1, sql) + b"".join(pb_len(2, bind_variable(*b)) for b in binds)


def tablet_execute(sql, eff=None, imm=None, binds=(), tx=0, stream=False):
    """queryservice Execute / StreamExecute request, fields in the order Go's encoder writes."""
    m = b""
    if eff is not None:
        m += pb_len(1, eff)
    if imm is not None:
        m += pb_len(2, imm)
    m += pb_len(3, target("commerce", "-80"))
    m += pb_len(4, bound_query(sql, binds))
    if tx:
        m += pb_varint(6 if stream else 5, tx)
    if not stream:
        m += pb_len(6, b"")  # ExecuteOptions, empty
    return m


def vtgate_execute(sql, eff, keyspace="commerce"):
    """vtgate.ExecuteRequest: caller_id 1, session 2 (target_string 1 inside), query 3."""
    session = pb_len(21, f"{keyspace}@primary") + pb_varint(4, 1)  # target_string, autocommit
    return pb_len(1, eff) + pb_len(2, session) + pb_len(3, bound_query(sql))


INT64, VARCHAR = 265, 6165

REQUESTS = {
    "execute-select": tablet_execute(
        "select id, name from customer where id = :id",
        eff=caller_id("app", "vtgate", "vtgate-1", ["readers"]),
        imm=vtgate_caller_id("vtgate client 1", ["vtgate"]),
        binds=[("id", INT64, b"42")],
    ),
    "execute-insert-in-transaction": tablet_execute(
        "insert into corder(customer_id, sku, price) values (:v1, :v2, :v3)",
        eff=caller_id("app"),
        imm=vtgate_caller_id("vtgate client 1"),
        binds=[("v1", INT64, b"1"), ("v2", VARCHAR, b"SKU-1002"), ("v3", INT64, b"30")],
        tx=1733119200123456789,
    ),
    "stream-execute-scan": tablet_execute(
        "select * from product",
        eff=caller_id("batch", groups=["etl", "readers"]),
        imm=vtgate_caller_id("vtgate client 1"),
        stream=True,
    ),
    "execute-no-caller-ids": tablet_execute("select 1 from dual"),
    "execute-only-immediate": tablet_execute(
        "delete from customer where id = 9", imm=vtgate_caller_id("vtgate client 1")
    ),
    # A caller naming itself twice: by protobuf's merge rule the upstream sees both merged.
    "execute-two-immediate-caller-ids": tablet_execute(
        "update customer set email = 'x' where id = 1",
        eff=caller_id("app"),
        imm=vtgate_caller_id("mallory"),
    )
    + pb_len(2, vtgate_caller_id("admin", ["admins"])),
    # Field 2 with the wrong wire type (varint): still replaced.
    "execute-immediate-as-varint": pb_len(1, caller_id("app"))
    + pb_varint(2, 7)
    + pb_len(4, bound_query("select 1")),
    # Fields vtguard does not know, fixed-width ones included: forwarded byte for byte.
    "execute-unknown-fields": tablet_execute(
        "select 1", eff=caller_id("app"), imm=vtgate_caller_id("vtgate client 1")
    )
    + b"\x79" + struct.pack("<d", 1.5)  # field 15, I64
    + b"\x85\x01" + struct.pack("<I", 7)  # field 16, I32
    + pb_varint(1000, 1),
    "vtgate-execute": vtgate_execute(
        "select o.id from corder o join customer c on c.id = o.customer_id",
        caller_id("app", "web", groups=["readers"]),
    ),
    "vtgate-execute-ddl": vtgate_execute(
        "alter table customer add column note varchar(64)", caller_id("ops")
    ),
    "empty-message": b"",
}


# --- gRPC framing and compression -----------------------------------------------------------


def grpc_frame(msg, compressed=False):
    return bytes([1 if compressed else 0]) + struct.pack(">I", len(msg)) + msg


def gzip_bytes(data):
    return gzip.compress(data, mtime=0)


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def snappy_block(data):
    """A valid snappy block: literals, and for runs of one byte, copies with offset 1."""
    out = bytearray(varint(len(data)))
    i = 0
    while i < len(data):
        run = 1
        while i + run < len(data) and data[i + run] == data[i]:
            run += 1
        if run >= 8:
            out += bytes([0, data[i]])  # literal of 1 byte
            left = run - 1
            while left > 0:
                n = min(64, left)
                out += bytes([(n - 1) << 2 | 2]) + struct.pack("<H", 1)  # copy, 2-byte offset
                left -= n
            i += run
        else:
            j = i
            while j < len(data) and j - i < 60:
                j += 1
            out += bytes([(j - i - 1) << 2]) + data[i:j]
            i = j
    return bytes(out)


def snappy_frames(data):
    """The snappy framing format (what grpc-encoding: snappy carries): stream identifier, then
    compressed chunks of at most 64 KiB with their masked CRC-32C."""
    out = bytearray(b"\xff\x06\x00\x00sNaPpY")
    for at in range(0, max(len(data), 1), 65536):
        chunk = data[at : at + 65536]
        crc = crc32c(chunk)
        masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
        body = struct.pack("<I", masked) + snappy_block(chunk)
        out += b"\x00" + struct.pack("<I", len(body))[:3] + body
    return bytes(out)


# --- MySQL protocol -------------------------------------------------------------------------

PROTOCOL_41, SECURE_CONNECTION = 1 << 9, 1 << 15
LONG_PASSWORD, FOUND_ROWS, LONG_FLAG, CONNECT_WITH_DB = 1, 2, 4, 8
LOCAL_FILES, SSL, TRANSACTIONS, INTERACTIVE = 1 << 7, 1 << 11, 1 << 13, 1 << 10
MULTI_STATEMENTS, MULTI_RESULTS, PS_MULTI_RESULTS = 1 << 16, 1 << 17, 1 << 18
PLUGIN_AUTH, CONNECT_ATTRS, PLUGIN_AUTH_LENENC = 1 << 19, 1 << 20, 1 << 21
SESSION_TRACK, DEPRECATE_EOF = 1 << 23, 1 << 24


def lenenc(n):
    if n < 0xFB:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfc" + struct.pack("<H", n)
    if n <= 0xFFFFFF:
        return b"\xfd" + struct.pack("<I", n)[:3]
    return b"\xfe" + struct.pack("<Q", n)


def lenenc_str(s):
    if isinstance(s, str):
        s = s.encode()
    return lenenc(len(s)) + s


def packet(seq, payload):
    return struct.pack("<I", len(payload))[:3] + bytes([seq & 0xFF]) + payload


def login(caps, user, auth, db=None, plugin=None, attrs=None, ext=0, charset=45):
    p = struct.pack("<IIB", caps, 1 << 24, charset) + bytes(19)
    p += struct.pack("<I", ext) if caps & LONG_PASSWORD == 0 else bytes(4)
    p += user + b"\0"
    if caps & PLUGIN_AUTH_LENENC:
        p += lenenc(len(auth)) + auth
    elif caps & SECURE_CONNECTION:
        p += bytes([len(auth)]) + auth
    else:
        p += auth + b"\0"
    if caps & CONNECT_WITH_DB:
        p += (db or b"") + b"\0"
    if caps & PLUGIN_AUTH:
        p += (plugin or b"") + b"\0"
    if caps & CONNECT_ATTRS:
        a = b"".join(lenenc_str(k) + lenenc_str(v) for k, v in attrs or [])
        p += lenenc(len(a)) + a
    return p


def greeting(version, conn_id, salt, caps, plugin, ext=0, charset=45, status=2):
    p = b"\x0a" + version + b"\0" + struct.pack("<I", conn_id) + salt[:8] + b"\0"
    p += struct.pack("<HBHH", caps & 0xFFFF, charset, status, caps >> 16)
    p += bytes([len(salt) + 1 if caps & PLUGIN_AUTH else 0]) + bytes(6)
    p += struct.pack("<I", ext) if caps & LONG_PASSWORD == 0 else bytes(4)
    if caps & SECURE_CONNECTION:
        rest = salt[8:]
        p += rest + bytes(13 - min(len(rest), 12))
    if caps & PLUGIN_AUTH:
        p += plugin + b"\0"
    return p


def ok(affected=0, insert_id=0, status=2, warnings=0, header=0x00, info=b""):
    return bytes([header]) + lenenc(affected) + lenenc(insert_id) + struct.pack("<HH", status, warnings) + info


def err_packet(code, state, message):
    return b"\xff" + struct.pack("<H", code) + b"#" + state + message


def eof(status=2, warnings=0):
    return b"\xfe" + struct.pack("<HH", warnings, status)


def column_def(table, name, type_=0xFD, length=256):
    p = b"".join(lenenc_str(s) for s in ("def", "commerce", table, table, name, name))
    return p + b"\x0c" + struct.pack("<HIBHB", 45, length, type_, 0, 0) + b"\0\0"


def result_set(seq, columns, rows, deprecate_eof=False, status=2):
    out = [packet(seq, lenenc(len(columns)))]
    seq += 1
    for c in columns:
        out.append(packet(seq, column_def(*c)))
        seq += 1
    if not deprecate_eof:
        out.append(packet(seq, eof(status)))
        seq += 1
    for r in rows:
        out.append(packet(seq, b"".join(b"\xfb" if v is None else lenenc_str(v) for v in r)))
        seq += 1
    out.append(packet(seq, ok(header=0xFE, status=status) if deprecate_eof else eof(status)))
    return b"".join(out), seq + 1


CLIENT_CAPS = (
    LONG_PASSWORD | FOUND_ROWS | LONG_FLAG | LOCAL_FILES | PROTOCOL_41 | INTERACTIVE
    | TRANSACTIONS | SECURE_CONNECTION | MULTI_STATEMENTS | MULTI_RESULTS | PS_MULTI_RESULTS
    | PLUGIN_AUTH | CONNECT_ATTRS | PLUGIN_AUTH_LENENC | SESSION_TRACK | DEPRECATE_EOF
)
MYSQL_ATTRS = [
    ("_os", "Linux"), ("_client_name", "libmysql"), ("_pid", "28501"),
    ("_client_version", "8.0.40"), ("_platform", "x86_64"), ("program_name", "mysql"),
]
SCRAMBLE20 = bytes(range(0x30, 0x44))


def mysql_seeds():
    s = {}
    s["login-mysql8-caching-sha2"] = login(
        CLIENT_CAPS | CONNECT_WITH_DB, b"app", bytes(range(32)), b"commerce",
        b"caching_sha2_password", MYSQL_ATTRS, charset=255,
    )
    s["login-mariadb-native-lenenc-ext"] = login(
        (CLIENT_CAPS & ~LONG_PASSWORD) | CONNECT_WITH_DB | SSL, b"vtgate client 1", SCRAMBLE20,
        b"vt", b"mysql_native_password", [("_pid", "12"), ("_client_name", "libmariadb")],
        ext=0x14,
    )
    s["login-secure-connection"] = login(
        PROTOCOL_41 | SECURE_CONNECTION | PLUGIN_AUTH | LONG_PASSWORD | TRANSACTIONS,
        b"root", SCRAMBLE20, plugin=b"mysql_native_password",
    )
    s["login-clear-password"] = login(
        PROTOCOL_41 | PLUGIN_AUTH | PLUGIN_AUTH_LENENC | SECURE_CONNECTION | SSL,
        b"ldapuser", b"s3cret\0", plugin=b"mysql_clear_password",
    )
    s["login-old-auth-cstr"] = login(
        PROTOCOL_41 | CONNECT_WITH_DB | LONG_PASSWORD, b"legacy", b"x", b"test"
    )
    # A long auth response needs the LENENC form (2-byte length).
    s["login-long-auth-lenenc"] = login(
        PROTOCOL_41 | SECURE_CONNECTION | PLUGIN_AUTH | PLUGIN_AUTH_LENENC,
        b"u", bytes(300), plugin=b"sha256_password",
    )
    # Optional fields left out after the auth response (older clients).
    s["login-ends-after-auth"] = login(
        PROTOCOL_41 | SECURE_CONNECTION, b"app", SCRAMBLE20
    )
    s["ssl-request"] = struct.pack("<IIB", CLIENT_CAPS | SSL, 1 << 24, 255) + bytes(23)
    s["greeting-mariadb-10.11"] = greeting(
        b"5.5.5-10.11.6-MariaDB-0+deb12u1", 31, b"abcdefgh0123456789AB",
        0xF7FEF7FE & ~LONG_PASSWORD, b"mysql_native_password", ext=0x1D,
    )
    s["greeting-mysql-8.0"] = greeting(
        b"8.0.40", 8, b"\x1f\x0b5S|&vy\x01Kd\x19h\x12\x15rzHcJ", 0xDFFFFFFF,
        b"caching_sha2_password", charset=255,
    )
    s["greeting-no-plugin-auth"] = greeting(
        b"5.7.44-log", 1024, SCRAMBLE20, 0xF7FF, b""
    )
    s["server-auth-switch"] = packet(2, b"\xfemysql_native_password\0" + SCRAMBLE20 + b"\0")
    s["server-caching-sha2-full-auth"] = packet(2, b"\x01\x04")
    # Upstream streams, as the relay's tracker follows them. The first bytes double as the
    # commands the target queues, so the OK run below owes and ends several responses.
    s["server-ok-run"] = b"".join(packet(1, ok(status=2)) for _ in range(8))
    s["server-ok-insert-id-info"] = packet(1, ok(1, 1001, info=b"Rows matched: 1  Changed: 1  Warnings: 0"))
    s["server-err"] = packet(1, err_packet(1146, b"42S02", b"Table 'commerce.nope' doesn't exist"))
    rs, _ = result_set(1, [("customer", "id", 8, 20), ("customer", "email", 0xFD)],
                       [(b"1", b"alice@example.com"), (b"2", None)])
    s["server-resultset-eof"] = rs
    rs, _ = result_set(1, [("product", "sku", 0xFD)], [(b"SKU-1001",)], deprecate_eof=True)
    s["server-resultset-deprecate-eof"] = rs
    # Two result sets chained by SERVER_MORE_RESULTS_EXISTS, then the final OK.
    first, seq = result_set(1, [("t", "a", 3, 11)], [(b"1",)], status=2 | 0x08)
    second, seq = result_set(seq, [("t", "b", 3, 11)], [(b"2",)], status=2 | 0x08)
    s["server-multi-results"] = first + second + packet(seq, ok())
    # COM_STMT_PREPARE answer: OK with statement id, 1 column, 1 parameter, definitions, EOFs.
    prep = packet(1, b"\x00" + struct.pack("<IHHBH", 1, 1, 1, 0, 0))
    prep += packet(2, column_def("", "?", 8, 21)) + packet(3, eof())
    prep += packet(4, column_def("customer", "email")) + packet(5, eof())
    s["server-stmt-prepare"] = prep
    s["server-local-infile-request"] = packet(1, b"\xfb/tmp/load.csv") + packet(3, ok(3))
    s["server-statistics"] = packet(1, b"Uptime: 88  Threads: 2  Questions: 14  Slow queries: 0")
    # Client commands, framed.
    s["client-com-query"] = packet(0, b"\x03select id, email from customer where id = 1")
    s["client-pipelined"] = (
        packet(0, b"\x0e") + packet(0, b"\x16select * from product where sku = ?")
        + packet(0, b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01\xfd\x00\x08SKU-1001")
        + packet(0, b"\x19\x01\x00\x00\x00") + packet(0, b"\x01")
    )
    return s


# --- table ACLs and config ------------------------------------------------------------------


def pb_acl(groups):
    """tableacl.Config: table_groups 1 (TableGroupSpec: name 1, tables 2, readers 3, writers 4,
    admins 5)."""
    out = b""
    for name, tables, readers, writers, admins in groups:
        g = pb_len(1, name) + b"".join(pb_len(2, t) for t in tables)
        g += b"".join(pb_len(3, r) for r in readers) + b"".join(pb_len(4, w) for w in writers)
        g += b"".join(pb_len(5, a) for a in admins)
        out += pb_len(1, g)
    return out


ACL_JSON = {
    "acl-vitess-example.json": """{
  "table_groups": [
    {
      "name": "customer",
      "table_names_or_prefixes": ["customer", "corder"],
      "readers": ["vtgate client 1", "app"],
      "writers": ["app"],
      "admins": ["ops"]
    },
    {
      "name": "product",
      "table_names_or_prefixes": ["product%"],
      "readers": ["%"],
      "writers": ["catalog"],
      "admins": ["ops"]
    }
  ]
}
""",
    "acl-camel-case.json": '{"tableGroups": [{"name": "g", "tableNamesOrPrefixes": ["p_%"], '
    '"readers": ["u"], "writers": [], "admins": ["a"]}]}',
    "acl-procedures-and-unknown-keys.json": '{"table_groups": [{"name": "procs", '
    '"table_names_or_prefixes": ["call:refresh_stats", "call:%"], "writers": ["batch"], '
    '"comment": "secure mode checks CALL against call:<name>"}], "version": 3}',
    "acl-overlapping-prefixes.json": '{"table_groups": [{"name": "g1", "table_names_or_prefixes": '
    '["a%"]}, {"name": "g2", "table_names_or_prefixes": ["ab%"]}]}',
    "acl-duplicate-table.json": '{"table_groups": [{"name": "g1", "table_names_or_prefixes": '
    '["t1"]}, {"name": "g2", "table_names_or_prefixes": ["t1"]}]}',
    "acl-escapes.json": '{"table_groups": [{"name": "\\u00e9t\\u00e9", "table_names_or_prefixes":'
    ' ["`weird`", "t\\"q"], "readers": ["CN=vtgate,O=\\u0000"]}]}',
}

CONFIGS = {
    "config-kernel.toml": """[kernel]
protected-ports = [16991, 13306]
bpffs = "/sys/fs/bpf/vtg"
cgroup = "/sys/fs/cgroup"
[[kernel.access]]
port = 16991
identities = ["vtgate client 1", "vtgate client 1"]
""",
    "config-grpc-every-key.toml": """[[listener]]
name = "vttablet"
protocol = "grpc"
service = "vttablet"
listen = "0.0.0.0:15991"
upstream = "127.0.0.1:16991"
grpc-cert = "/etc/vtguard/server.pem"
grpc-key = "/etc/vtguard/server.key"
grpc-ca = "/etc/vtguard/clients.pem"
grpc-crl = "/etc/vtguard/clients.crl"
grpc-server-ca = "/etc/vtguard/ca.pem"
grpc-tls-min-version = "TLSv1.3"
grpc-use-effective-callerid = true
grpc-use-effective-groups = true
tablet-grpc-ca = "/etc/vtguard/tablet-ca.pem"
tablet-grpc-server-name = "vttablet server instance"
query-log = true
max-connections = 1000
max-connections-per-identity = 100
grpc-max-connection-idle = 300.5
[listener.services]
"tabletmanagerservice.TabletManager" = ["vtctld"]
""",
    "config-mysql-every-key.toml": """[[listener]]
name = "m"
protocol = "mysql"
listen = "127.0.0.1:3306"
upstream = "127.0.0.1:13306"
mysql-server-ssl-cert = "/c"
mysql-server-ssl-key = "/k"
mysql-server-ssl-ca = "/ca"
mysql-server-ssl-crl = "/crl"
mysql-server-tls-min-version = "TLSv1.3"
mysql-server-require-secure-transport = true
mysql-auth-server-impl = "clientcert"
max-allowed-packet = 2048
handshake-timeout-seconds = 2
mysql-allow-clear-text-without-tls = true
""",
    "config-cluster.toml": """[cluster]
etcd = ["http://127.0.0.1:2379"]
node = "n1"
lease-ttl-seconds = 10
[tableacl]
queryserver-config-strict-table-acl = true
[[listener]]
name = "l"
protocol = "grpc"
service = "vtgate"
listen = "127.0.0.1:1"
upstream = "127.0.0.1:2"
insecure-plaintext = true
""",
    "config-bad-port.toml": "[kernel]\nprotected-ports = [70000]\n",
    "config-unknown-key.toml": "[kernel]\nprotected-ports = [16991]\nprotected-port = 3\n",
    "config-inline-tables.toml": 'kernel = { protected-ports = [1, 0x10, 0o17, 1_000] }\n'
    'listener = [{ name = "x", protocol = "mysql", listen = "[::1]:3306", upstream = '
    '"[::1]:13306", insecure-plaintext = true, mysql-auth-server-impl = "passthrough" }]\n',
}


def main():
    for t in ["differential", "classify_no_panic", "caller_id_rewrite", "grpc_frames",
              "mysql_packets", "policy_and_config"]:
        shutil.rmtree(os.path.join(HERE, t), ignore_errors=True)
        os.makedirs(os.path.join(HERE, t))

    # differential: every 7th statement of Vitess's validSQL corpus (the README's recipe
    # seeds a long run with all of them).
    tsv = os.path.join(AGENT, "src/acl/testdata/vitess-validsql.tsv")
    with open(tsv, encoding="utf-8") as f:
        sqls = [line.rstrip("\n").split("\t", 1)[1] for line in f.readlines()[1:]]
    for i, sql in enumerate(sqls):
        if i % 7 == 0:
            write("differential", f"validsql-{i + 1:04d}", sql)

    # classify_no_panic: another slice of the corpus, shifted, and statements that reach the
    # classifier's own paths (comments, versioned comments, multi-statements, secure mode).
    for i, sql in enumerate(sqls):
        if i % 50 == 3:
            write("classify_no_panic", f"validsql-{i + 1:04d}", sql)
    for name, sql in {
        "multi-statement": "select * from t1; delete from t2 where id = 1; insert into t3 values (1)",
        "versioned-comment": "select /*!50000 sql_no_cache */ id from t1 /* x */ -- y\n where a = 1",
        "call-procedure": "call refresh_stats(1, 'x')",
        "load-data-local": "load data local infile '/tmp/x.csv' into table t1 fields terminated by ','",
        "set-and-use": "set @@session.sql_mode = 'ANSI'; use `commerce@primary`",
        "cte-update": "with c as (select id from t1) update t2 join c on c.id = t2.id set t2.x = 1",
        "quoted-names": "select `a``b`.`c` from `db`.`a``b` where \"s\\\"x\" = 'it''s'",
        "insert-select-on-dup": "insert into t1 (a) select a from t2 on duplicate key update a = values(a)",
        "lock-tables": "lock tables t1 read, t2 write; unlock tables",
        "show-and-explain": "show create table t1; explain format=json select * from t2",
    }.items():
        write("classify_no_panic", name, sql)

    for name, msg in REQUESTS.items():
        write("caller_id_rewrite", name, msg)

    # grpc_frames: request bodies as vtguard reads them off HTTP/2 DATA frames.
    ex = REQUESTS["execute-select"]
    big = tablet_execute("select * from t where id in (" + ", ".join(map(str, range(300))) + ")",
                         eff=caller_id("app"), imm=vtgate_caller_id("vtgate client 1"))
    for name, body in {
        "one-message": grpc_frame(ex),
        "two-messages": grpc_frame(ex) + grpc_frame(REQUESTS["stream-execute-scan"]),
        "empty-message": grpc_frame(b""),
        "gzip": grpc_frame(gzip_bytes(big), True),
        "snappy": grpc_frame(snappy_frames(big), True),
        # Decompress past 64 KiB (the target's grpc-max-message-size): refused, not allocated.
        "gzip-over-limit": grpc_frame(gzip_bytes(bytes(70000)), True),
        "snappy-over-limit": grpc_frame(snappy_frames(bytes(65537)), True),
        "gzip-then-plain": grpc_frame(gzip_bytes(ex), True) + grpc_frame(ex),
        "compressed-garbage": grpc_frame(b"\x1f\x8b\x08\x00not gzip", True),
        "truncated-frame": grpc_frame(ex)[:-3],
    }.items():
        write("grpc_frames", name, body)

    for name, data in mysql_seeds().items():
        write("mysql_packets", name, data)

    for name, text in ACL_JSON.items():
        write("policy_and_config", name, text)
    write("policy_and_config", "acl-binary.pb", pb_acl([
        ("customer", ["customer", "corder"], ["vtgate client 1"], ["app"], ["ops"]),
        ("product", ["product%"], ["%"], [], []),
    ]))
    write("policy_and_config", "acl-binary-empty-group.pb", pb_acl([("", [], [], [], [])]))
    for name in ["vttablet-node.toml", "vtgate-node.toml", "mysql-node.toml"]:
        with open(os.path.join(ROOT, "deploy/config", name), encoding="utf-8") as f:
            write("policy_and_config", f"config-deploy-{name}", f.read())
    for name, text in CONFIGS.items():
        write("policy_and_config", name, text)


if __name__ == "__main__":
    main()
