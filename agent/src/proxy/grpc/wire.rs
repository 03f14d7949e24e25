//! Protobuf at the wire level: walk a message's top-level fields, replace one field, read
//! sub-messages. vtguard never decodes and re-encodes a whole request, which would drop the
//! fields this build does not know; every byte it does not own is forwarded as it came.

use std::ops::Range;

/// Why a message is not valid protobuf.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("malformed varint at byte {0}")]
    BadVarint(usize),
    #[error("field number 0 at byte {0}")]
    FieldZero(usize),
    #[error("unsupported wire type {wire_type} (field {field}) at byte {offset}")]
    WireType {
        field: u32,
        wire_type: u8,
        offset: usize,
    },
}

/// One top-level field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub number: u32,
    pub wire_type: u8,
    /// The whole field: tag, (length), payload.
    pub span: Range<usize>,
    /// The payload (for length-delimited fields, without the length).
    pub payload: Range<usize>,
}

pub const VARINT: u8 = 0;
pub const I64: u8 = 1;
pub const LEN: u8 = 2;
pub const I32: u8 = 5;

fn varint(buf: &[u8], mut at: usize) -> Result<(u64, usize), WireError> {
    let start = at;
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let Some(&b) = buf.get(at) else {
            return Err(WireError::Truncated(start));
        };
        at += 1;
        if shift == 63 && b > 1 {
            return Err(WireError::BadVarint(start));
        }
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok((value, at));
        }
    }
    Err(WireError::BadVarint(start))
}

/// Appends a varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Every top-level field of `msg`, checked to the last byte. Groups (wire types 3 and 4) are
/// refused: no Vitess message uses them.
pub fn fields(msg: &[u8]) -> Result<Vec<Field>, WireError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < msg.len() {
        let start = at;
        let (tag, next) = varint(msg, at)?;
        at = next;
        let number = u32::try_from(tag >> 3).map_err(|_| WireError::BadVarint(start))?;
        let wire_type = (tag & 7) as u8;
        if number == 0 {
            return Err(WireError::FieldZero(start));
        }
        let payload = match wire_type {
            VARINT => {
                let (_, next) = varint(msg, at)?;
                let p = at..next;
                at = next;
                p
            }
            I64 | I32 => {
                let n = if wire_type == I64 { 8 } else { 4 };
                if msg.len() - at < n {
                    return Err(WireError::Truncated(at));
                }
                let p = at..at + n;
                at += n;
                p
            }
            LEN => {
                let (len, next) = varint(msg, at)?;
                let len = usize::try_from(len).map_err(|_| WireError::Truncated(at))?;
                if msg.len() - next < len {
                    return Err(WireError::Truncated(at));
                }
                at = next + len;
                next..at
            }
            _ => {
                return Err(WireError::WireType {
                    field: number,
                    wire_type,
                    offset: start,
                })
            }
        };
        out.push(Field {
            number,
            wire_type,
            span: start..at,
            payload,
        });
    }
    Ok(out)
}

/// The concatenated payloads of every length-delimited occurrence of field `number`: by
/// protobuf's merge rule, that is the sub-message a decoder would see. `None` if absent.
pub fn merged_submessage(msg: &[u8], fields: &[Field], number: u32) -> Option<Vec<u8>> {
    let mut found = false;
    let mut out = Vec::new();
    for f in fields
        .iter()
        .filter(|f| f.number == number && f.wire_type == LEN)
    {
        found = true;
        out.extend_from_slice(&msg[f.payload.clone()]);
    }
    found.then_some(out)
}

/// `msg` with every occurrence of field `number` (whatever its wire type) removed and one
/// length-delimited field `number` holding `payload` put where the first occurrence was (or at
/// the end). Every other byte is unchanged and in order.
pub fn replace_field(msg: &[u8], fields: &[Field], number: u32, payload: &[u8]) -> Vec<u8> {
    let mut new_field = Vec::with_capacity(payload.len() + 6);
    put_varint(&mut new_field, (u64::from(number) << 3) | u64::from(LEN));
    put_varint(&mut new_field, payload.len() as u64);
    new_field.extend_from_slice(payload);

    let mut out = Vec::with_capacity(msg.len() + new_field.len());
    let mut placed = false;
    for f in fields {
        if f.number == number {
            if !placed {
                out.extend_from_slice(&new_field);
                placed = true;
            }
        } else {
            out.extend_from_slice(&msg[f.span.clone()]);
        }
    }
    if !placed {
        out.extend_from_slice(&new_field);
    }
    out
}

/// The strings of every length-delimited occurrence of field `number` (a string or a
/// repeated string), or an error naming the field if one is not UTF-8.
pub fn strings(msg: &[u8], fields: &[Field], number: u32) -> Result<Vec<String>, WireError> {
    fields
        .iter()
        .filter(|f| f.number == number && f.wire_type == LEN)
        .map(|f| {
            String::from_utf8(msg[f.payload.clone()].to_vec()).map_err(|_| WireError::WireType {
                field: number,
                wire_type: LEN,
                offset: f.span.start,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use vtguard_proto::query::{self, BoundQuery, ExecuteRequest, Target, VtGateCallerId};
    use vtguard_proto::vtrpc::CallerId;

    fn request() -> ExecuteRequest {
        ExecuteRequest {
            effective_caller_id: Some(CallerId {
                principal: "app".into(),
                component: "c".into(),
                subcomponent: "s".into(),
                groups: vec!["g".into()],
            }),
            immediate_caller_id: Some(VtGateCallerId {
                username: "vtgate client 1".into(),
                groups: vec!["admins".into()],
            }),
            target: Some(Target {
                keyspace: "test_keyspace".into(),
                shard: "0".into(),
                tablet_type: 1,
                cell: String::new(),
            }),
            query: Some(BoundQuery {
                sql: "select * from vt_insert_test".into(),
                bind_variables: Default::default(),
            }),
            transaction_id: 42,
            options: None,
            reserved_id: 7,
        }
    }

    #[test]
    fn replacing_the_immediate_caller_keeps_every_other_byte() {
        let mut msg = request().encode_to_vec();
        // A field this build does not know (99), which must survive.
        msg.extend_from_slice(&[0x9a, 0x06, 3, b'x', b'y', b'z']);
        let f = fields(&msg).expect("valid");
        let ours = VtGateCallerId {
            username: "vtgate client 2".into(),
            groups: vec!["localhost".into()],
        }
        .encode_to_vec();
        let out = replace_field(&msg, &f, 2, &ours);
        let decoded = ExecuteRequest::decode(out.as_slice()).expect("decodes");
        assert_eq!(
            decoded.immediate_caller_id.expect("set").username,
            "vtgate client 2"
        );
        assert_eq!(decoded.effective_caller_id, request().effective_caller_id);
        assert_eq!(decoded.query, request().query);
        // All fields but 2, byte for byte and in order.
        let strip = |m: &[u8]| -> Vec<u8> {
            let f = fields(m).expect("valid");
            f.iter()
                .filter(|x| x.number != 2)
                .flat_map(|x| m[x.span.clone()].to_vec())
                .collect()
        };
        assert_eq!(strip(&out), strip(&msg));
        assert!(out.ends_with(&[0x9a, 0x06, 3, b'x', b'y', b'z']));
    }

    #[test]
    fn every_occurrence_is_replaced_whatever_its_wire_type() {
        // Field 2 three times: as a message, as a varint, and as a second message that a
        // decoder would merge into the first.
        let mut msg = Vec::new();
        msg.extend_from_slice(&[0x12, 0x03, 0x0a, 0x01, b'a']); // 2: {username: "a"}
        msg.extend_from_slice(&[0x10, 0x05]); // 2: varint 5
        msg.extend_from_slice(&[0x18, 0x01]); // 3: varint 1
        msg.extend_from_slice(&[0x12, 0x03, 0x12, 0x01, b'g']); // 2: {groups: ["g"]}
        let f = fields(&msg).expect("valid");
        let out = replace_field(&msg, &f, 2, &[0x0a, 0x01, b'z']);
        assert_eq!(out, vec![0x12, 0x03, 0x0a, 0x01, b'z', 0x18, 0x01]);
        let absent = replace_field(
            &[0x18, 0x01],
            &fields(&[0x18, 0x01]).expect("valid"),
            2,
            &[],
        );
        assert_eq!(absent, vec![0x18, 0x01, 0x12, 0x00]);
    }

    #[test]
    fn merged_submessage_follows_protobufs_merge_rule() {
        let msg = [0x12, 0x03, 0x0a, 0x01, b'a', 0x12, 0x03, 0x12, 0x01, b'g'];
        let f = fields(&msg).expect("valid");
        let merged = merged_submessage(&msg, &f, 2).expect("present");
        let id = VtGateCallerId::decode(merged.as_slice()).expect("decodes");
        assert_eq!(
            (id.username.as_str(), id.groups),
            ("a", vec!["g".to_owned()])
        );
        assert_eq!(merged_submessage(&msg, &f, 9), None);
    }

    #[test]
    fn malformed_messages_are_refused_with_the_offset() {
        assert_eq!(fields(&[0x12, 0x05, 0x01]), Err(WireError::Truncated(1)));
        assert_eq!(fields(&[0x08]), Err(WireError::Truncated(1)));
        assert_eq!(fields(&[0x80]), Err(WireError::Truncated(0)));
        assert_eq!(fields(&[0x00, 0x01]), Err(WireError::FieldZero(0)));
        assert_eq!(
            fields(&[0x0b]),
            Err(WireError::WireType {
                field: 1,
                wire_type: 3,
                offset: 0
            })
        );
        assert_eq!(fields(&[0x0d, 1, 2]), Err(WireError::Truncated(1)));
        assert!(matches!(
            fields(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(WireError::BadVarint(1))
        ));
        // A length that would overflow.
        assert!(
            fields(&[0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err()
        );
        assert_eq!(fields(&[]).expect("empty is valid"), vec![]);
    }

    #[test]
    fn repeated_strings() {
        let msg = query::BeginExecuteRequest {
            pre_queries: vec!["set a=1".into(), "set b=2".into()],
            ..Default::default()
        }
        .encode_to_vec();
        let f = fields(&msg).expect("valid");
        assert_eq!(
            strings(&msg, &f, 7).expect("utf-8"),
            vec!["set a=1", "set b=2"]
        );
        let bad = [0x3a, 0x01, 0xff];
        assert!(strings(&bad, &fields(&bad).expect("valid"), 7).is_err());
    }
}
