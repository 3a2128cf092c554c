//! The MQTT wire format: packets of 3.1, 3.1.1 and 5.0, decoded strictly and without copies,
//! encoded in one pass. Pure functions over bytes: no runtime, no I/O.

mod decode;
mod encode;
mod error;
mod packet;
pub mod properties;
mod reason;
pub mod wire;

pub use decode::{decode, decode_body, frame_header, FrameHeader};
pub use encode::{encode, encoded_len, publish_len, put_ack, put_publish_header, AckType};
pub use error::DecodeError;
pub use packet::*;
pub use properties::{Properties, Props};
pub use reason::ReasonCode;
pub use wire::MAX_FIELD;

#[cfg(test)]
mod tests;
