//! What a call of the simulated core answers: a status, a JSON body in the core's
//! form, and for a refusal a note for the log. Every endpoint module answers so.

use crate::error::SimError;
use serde_json::{json, Value};

/// One answer: status, JSON body, and a note for the log when the call was refused.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub refused: Option<String>,
}

pub fn ok(body: Value) -> Answer {
    Answer {
        status: 200,
        body,
        refused: None,
    }
}

pub fn fail(status: u16, code: &str, why: impl Into<String>) -> Answer {
    let why = why.into();
    Answer {
        status,
        body: json!({"why": why, "errorCode": code}),
        refused: Some(why),
    }
}

pub fn internal(e: SimError) -> Answer {
    fail(500, "INTERNAL_ERROR", e.to_string())
}
