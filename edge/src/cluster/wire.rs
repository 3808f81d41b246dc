//! What nodes send each other on the backplane's live and bulk classes: requests for a
//! conversation's owner, their answers, and the owner's deliveries to subscribed nodes.
//!
//! A frame is one tag byte ([`TAG`], which no JSON control frame starts with) and a
//! [postcard](https://docs.rs/postcard) encoding of [`Wire`]. Postcard is compact (varints,
//! no field names) and checks lengths as it reads, so a damaged or hostile frame is an error,
//! never a panic or an allocation it announces. Ids read from another node are checked as a
//! client's are (`UserId`, `ConvId` validate on the way in).

use crate::node::ops::OpError;
use crate::node::request::{Outcome, Request};
use crate::node::{ConnRef, Delivery, Reach};
use crate::proto::ErrorCode;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The first byte of every frame this module writes.
pub const TAG: u8 = 0xB1;

#[derive(Debug, Serialize, Deserialize)]
pub enum Wire {
    /// For the conversation's owner; answered with the same `id`.
    Request {
        id: u64,
        request: Request,
    },
    Answer {
        id: u64,
        result: Result<Outcome, WireError>,
    },
    /// A committed frame for a subscribed node's connections.
    Deliver(Deliver),
}

/// An [`OpError`] as it crosses the mesh.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireError {
    pub code: String,
    pub message: String,
    pub retry_after_ms: Option<u64>,
}

impl From<OpError> for WireError {
    fn from(e: OpError) -> WireError {
        WireError { code: e.code.as_str().into(), message: e.message, retry_after_ms: e.retry_after_ms }
    }
}

impl From<WireError> for OpError {
    fn from(e: WireError) -> OpError {
        let code = ErrorCode::parse(&e.code).unwrap_or(ErrorCode::Internal);
        OpError { code, message: e.message, retry_after_ms: e.retry_after_ms }
    }
}

/// Who on the receiving node a delivery is for: the conversation's members connected there,
/// after these changes (users connected there who joined or left with this frame).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub joins: Vec<Box<str>>,
    pub leaves: Vec<Box<str>>,
}

/// A delivery for one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deliver {
    pub conv: Box<str>,
    /// The message's seq; 0 for frames that are not messages.
    pub seq: u64,
    /// The sending connection, when it is on the receiving node.
    pub except: Option<ConnRef>,
    pub reach: Reach,
    pub frame: Box<str>,
    pub json: Bytes,
    pub bin: Bytes,
    pub target: Target,
}

impl Deliver {
    pub fn of(d: &Delivery, except: Option<ConnRef>, target: Target) -> Deliver {
        Deliver {
            conv: d.conv.clone(),
            seq: d.seq,
            except,
            reach: d.reach,
            frame: d.frame.into(),
            json: d.json.clone(),
            bin: d.bin.clone(),
            target,
        }
    }
}

/// The frame types a delivery carries, as `'static` names for the metrics.
pub fn frame_name(name: &str) -> &'static str {
    match name {
        "msg" => "msg",
        "receipt" => "receipt",
        "typing" => "typing",
        "joined" => "joined",
        "left" => "left",
        _ => "other",
    }
}

pub fn encode(w: &Wire) -> Bytes {
    let mut out = vec![TAG];
    // Serializing into a Vec fails only for types serde cannot express, and these are plain.
    out.extend(postcard::to_allocvec(w).expect("wire types serialize"));
    Bytes::from(out)
}

/// `None` for a frame that is not ours (a control frame: the terms).
pub fn decode(frame: &[u8]) -> Option<Result<Wire, String>> {
    let (&tag, rest) = frame.split_first()?;
    (tag == TAG).then(|| postcard::from_bytes(rest).map_err(|e| format!("a malformed frame: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_store::{ConvId, Seq, UserId};

    #[test]
    fn requests_answers_and_deliveries_round_trip_and_damage_is_an_error() {
        let request = Request::Sync {
            conv: ConvId::new("g:team").unwrap(),
            reader: Some(UserId::new("alice").unwrap()),
            after: Seq(4),
            limit: 100,
        };
        let frame = encode(&Wire::Request { id: 7, request });
        match decode(&frame) {
            Some(Ok(Wire::Request { id: 7, request: Request::Sync { after: Seq(4), limit: 100, .. } })) => {}
            other => panic!("{other:?}"),
        }
        let error = OpError::new(ErrorCode::Unavailable, "later");
        let frame = encode(&Wire::Answer { id: 1, result: Err(error.clone().into()) });
        let Some(Ok(Wire::Answer { result: Err(e), .. })) = decode(&frame) else { panic!() };
        assert_eq!(OpError::from(e), error);
        // Every truncation is an error, not a panic; an id a client could not send is refused.
        for n in 1..frame.len() {
            assert!(matches!(decode(&frame[..n]), Some(Err(_))), "{n}");
        }
        let bad =
            encode(&Wire::Request { id: 1, request: Request::Unsubscribe { user: UserId::new("mallory").unwrap() } });
        let forged = bad.to_vec().iter().map(|b| if *b == b'y' { b' ' } else { *b }).collect::<Vec<u8>>();
        assert!(matches!(decode(&forged), Some(Err(_))));
        // The terms (JSON) are not ours.
        assert!(decode(br#"{"t":"terms"}"#).is_none());
    }
}
