//! TFTP wire format (RFC 1350) with options (RFC 2347).

use bytes::{BufMut, Bytes, BytesMut};

pub const OP_RRQ: u16 = 1;
pub const OP_WRQ: u16 = 2;
pub const OP_DATA: u16 = 3;
pub const OP_ACK: u16 = 4;
pub const OP_ERROR: u16 = 5;
pub const OP_OACK: u16 = 6;

/// TFTP error codes (RFC 1350, RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    IllegalOperation = 4,
    // RFC 1350 and 2347's table, kept whole; the agent itself never sends
    // these two (a stray packet is dropped, an option it cannot honour is
    // left out of the OACK).
    #[allow(dead_code)]
    UnknownTransferId = 5,
    #[allow(dead_code)]
    OptionNegotiation = 8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    ReadRequest(Request),
    WriteRequest(Request),
    Data { block: u16, payload: Bytes },
    Ack { block: u16 },
    Error { code: u16, message: String },
    OptionAck { options: Vec<(String, String)> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub filename: String,
    pub mode: String,
    /// Option names lower-cased, in the order the client sent them.
    pub options: Vec<(String, String)>,
    /// The request's size on the wire: no reply to it may be larger.
    pub wire_len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet too short")]
    TooShort,
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("request is missing its terminating NUL")]
    Unterminated,
    #[error("request text is not valid UTF-8")]
    NotUtf8,
    #[error("option {0:?} has no value")]
    OptionWithoutValue(String),
}

impl Packet {
    pub fn parse(buf: &[u8]) -> Result<Packet, PacketError> {
        if buf.len() < 2 {
            return Err(PacketError::TooShort);
        }
        let opcode = u16::from_be_bytes([buf[0], buf[1]]);
        let body = &buf[2..];
        match opcode {
            OP_RRQ => Ok(Packet::ReadRequest(parse_request(body)?)),
            OP_WRQ => Ok(Packet::WriteRequest(parse_request(body)?)),
            OP_DATA | OP_ACK | OP_ERROR if body.len() < 2 => Err(PacketError::TooShort),
            OP_DATA => Ok(Packet::Data {
                block: u16::from_be_bytes([body[0], body[1]]),
                payload: Bytes::copy_from_slice(&body[2..]),
            }),
            OP_ACK => Ok(Packet::Ack {
                block: u16::from_be_bytes([body[0], body[1]]),
            }),
            OP_ERROR => {
                let text = &body[2..];
                let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
                Ok(Packet::Error {
                    code: u16::from_be_bytes([body[0], body[1]]),
                    message: String::from_utf8_lossy(&text[..end]).into_owned(),
                })
            }
            OP_OACK => {
                let fields = split_strings(body)?;
                Ok(Packet::OptionAck {
                    options: pair_options(&fields)?,
                })
            }
            other => Err(PacketError::UnknownOpcode(other)),
        }
    }
}

fn split_strings(body: &[u8]) -> Result<Vec<String>, PacketError> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    if body.last() != Some(&0) {
        return Err(PacketError::Unterminated);
    }
    body[..body.len() - 1]
        .split(|b| *b == 0)
        .map(|field| {
            std::str::from_utf8(field)
                .map(str::to_string)
                .map_err(|_| PacketError::NotUtf8)
        })
        .collect()
}

fn pair_options(fields: &[String]) -> Result<Vec<(String, String)>, PacketError> {
    fields
        .chunks(2)
        .map(|pair| match pair {
            [name, value] => Ok((name.to_ascii_lowercase(), value.clone())),
            [name] => Err(PacketError::OptionWithoutValue(name.clone())),
            _ => Err(PacketError::TooShort),
        })
        .collect()
}

fn parse_request(body: &[u8]) -> Result<Request, PacketError> {
    let fields = split_strings(body)?;
    if fields.len() < 2 {
        return Err(PacketError::TooShort);
    }
    // Some clients pad requests with extra NULs; ignore empty trailing fields.
    let mut rest: Vec<String> = fields[2..].to_vec();
    while rest.last().is_some_and(String::is_empty) {
        rest.pop();
    }
    Ok(Request {
        wire_len: body.len() + 2,
        filename: fields[0].clone(),
        mode: fields[1].to_ascii_lowercase(),
        options: pair_options(&rest)?,
    })
}

/// A DATA packet: header plus payload in one buffer, as a client would
/// see it.
#[cfg(test)]
pub fn data(block: u16, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(4 + payload.len());
    buf.put_u16(OP_DATA);
    buf.put_u16(block);
    buf.put_slice(payload);
    buf.freeze()
}

/// The 4-byte header of a DATA packet.
pub fn data_header(block: u16) -> [u8; 4] {
    let [hi, lo] = block.to_be_bytes();
    [0, OP_DATA as u8, hi, lo]
}

#[cfg(test)]
pub fn ack(block: u16) -> Bytes {
    let mut buf = BytesMut::with_capacity(4);
    buf.put_u16(OP_ACK);
    buf.put_u16(block);
    buf.freeze()
}

pub fn error(code: ErrorCode, message: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + message.len());
    buf.put_u16(OP_ERROR);
    buf.put_u16(code as u16);
    buf.put_slice(message.as_bytes());
    buf.put_u8(0);
    buf.freeze()
}

/// The smallest ERROR packet: opcode, code, an empty message's NUL.
pub const MIN_ERROR_LEN: usize = 5;

/// An ERROR packet no larger than `limit` bytes (the request it answers:
/// a spoofed request must not buy a larger reply); the message is cut to
/// fit, on a character boundary.
pub fn error_within(code: ErrorCode, message: &str, limit: usize) -> Bytes {
    let room = limit.saturating_sub(MIN_ERROR_LEN);
    let mut end = message.len().min(room);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    error(code, &message[..end])
}

pub fn option_ack(options: &[(String, String)]) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_u16(OP_OACK);
    for (name, value) in options {
        put_option(&mut buf, name, value);
    }
    buf.freeze()
}

/// `name NUL value NUL`, as options are written in RRQ and OACK.
fn put_option(buf: &mut BytesMut, name: &str, value: &str) {
    buf.put_slice(name.as_bytes());
    buf.put_u8(0);
    buf.put_slice(value.as_bytes());
    buf.put_u8(0);
}

#[cfg(test)]
pub fn read_request(filename: &str, options: &[(&str, &str)]) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_u16(OP_RRQ);
    buf.put_slice(filename.as_bytes());
    buf.put_u8(0);
    buf.put_slice(b"octet\0");
    for (name, value) in options {
        put_option(&mut buf, name, value);
    }
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_request_round_trip() {
        let raw = read_request("undionly.kpxe", &[("BLKSIZE", "1468"), ("tsize", "0")]);
        let Packet::ReadRequest(req) = Packet::parse(&raw).unwrap() else {
            panic!("not an RRQ");
        };
        assert_eq!(req.filename, "undionly.kpxe");
        assert_eq!(req.mode, "octet");
        assert_eq!(
            req.options,
            vec![
                ("blksize".into(), "1468".into()),
                ("tsize".into(), "0".into())
            ]
        );
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        assert_eq!(Packet::parse(&[]), Err(PacketError::TooShort));
        assert_eq!(Packet::parse(&[0, 1, b'a']), Err(PacketError::Unterminated));
        assert_eq!(Packet::parse(&[0, 1, b'a', 0]), Err(PacketError::TooShort));
        assert_eq!(Packet::parse(&[0, 9]), Err(PacketError::UnknownOpcode(9)));
        assert_eq!(Packet::parse(&[0, 4, 1]), Err(PacketError::TooShort));
        assert!(matches!(
            Packet::parse(b"\x00\x01f\x00octet\x00blksize\x00"),
            Err(PacketError::OptionWithoutValue(_))
        ));
        assert_eq!(
            Packet::parse(&[0, 1, 0xff, 0, b'o', 0]),
            Err(PacketError::NotUtf8)
        );
    }

    #[test]
    fn error_and_ack_encoding() {
        assert_eq!(
            Packet::parse(&error(ErrorCode::FileNotFound, "nope")).unwrap(),
            Packet::Error {
                code: 1,
                message: "nope".into()
            }
        );
        assert_eq!(
            Packet::parse(&ack(65535)).unwrap(),
            Packet::Ack { block: 65535 }
        );
        assert_eq!(
            Packet::parse(&data(7, b"xyz")).unwrap(),
            Packet::Data {
                block: 7,
                payload: Bytes::from_static(b"xyz")
            }
        );
    }
}
