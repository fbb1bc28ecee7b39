//! A FreeIPA error as the JSON-RPC answer carries it.

use std::fmt;

use serde_json::{json, Value};

/// `{"code", "name", "message", "data"}` of an answer's `error`, with the
/// codes and names of FreeIPA's `ipalib/errors.py`.
#[derive(Debug, Clone, PartialEq)]
pub struct IpaError {
    pub code: u32,
    pub name: String,
    pub message: String,
    pub data: Value,
}

impl IpaError {
    pub fn new(code: u32, name: &str, message: impl Into<String>, data: Value) -> IpaError {
        IpaError {
            code,
            name: name.to_owned(),
            message: message.into(),
            data,
        }
    }

    /// 4001: `<key>: <object> not found`.
    pub fn not_found(key: &str, object: &str) -> IpaError {
        let reason = format!("{key}: {object} not found");
        IpaError::new(
            4001,
            "NotFound",
            reason.clone(),
            json!({ "reason": reason }),
        )
    }

    pub fn not_found_reason(reason: impl Into<String>) -> IpaError {
        let reason = reason.into();
        IpaError::new(
            4001,
            "NotFound",
            reason.clone(),
            json!({ "reason": reason }),
        )
    }

    /// 4002: `<object> with name "<key>" already exists`.
    pub fn duplicate(key: &str, object: &str) -> IpaError {
        IpaError::duplicate_message(format!("{object} with name \"{key}\" already exists"))
    }

    pub fn duplicate_message(message: String) -> IpaError {
        IpaError::new(4002, "DuplicateEntry", message, json!({}))
    }

    /// 4202: nothing to change.
    pub fn empty_modlist() -> IpaError {
        IpaError::new(
            4202,
            "EmptyModlist",
            "no modifications to be performed",
            json!({}),
        )
    }

    pub fn aci(info: impl Into<String>) -> IpaError {
        let info = info.into();
        IpaError::new(
            2100,
            "ACIError",
            format!("Insufficient access: {info}"),
            json!({ "info": info }),
        )
    }

    pub fn validation(name: &str, error: impl Into<String>) -> IpaError {
        let error = error.into();
        IpaError::new(
            3009,
            "ValidationError",
            format!("invalid '{name}': {error}"),
            json!({ "name": name, "error": error }),
        )
    }

    pub fn internal() -> IpaError {
        IpaError::new(
            903,
            "InternalError",
            "an internal error has occurred",
            json!({}),
        )
    }

    /// The `error` object of an answer.
    pub fn to_json(&self) -> Value {
        json!({
            "code": self.code,
            "name": self.name,
            "message": self.message,
            "data": self.data,
        })
    }
}

impl fmt::Display for IpaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.name, self.code, self.message)
    }
}

impl std::error::Error for IpaError {}
