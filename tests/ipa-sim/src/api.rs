//! FreeIPA's `API.txt`, read into commands, and the checks the server makes
//! on every JSON-RPC call before it runs anything.
//!
//! The order and the answers follow FreeIPA's `rpcserver.py`
//! (`jsonserver.unmarshal`, `_get_command`) and `frontend.py`
//! (`Command.__do_call`: version, then arguments and options, then
//! conversion, then validation), with each parameter type converted as its
//! class in `parameters.py` does. So a number for a `Str` is accepted (the
//! server converts it to text), while a boolean, a list or an object is
//! refused (3008); a value outside a `StrEnum` fails validation (3009).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Map, Value};

use crate::error::IpaError;

/// The API version of the `API.txt` the simulator is checked against, and
/// the one it reports (FreeIPA 4.13).
pub const SERVER_API_VERSION: &str = "2.257";

/// One parameter (`arg:` or `option:` line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    /// The ipalib class: `Str`, `Flag`, `StrEnum`, `ARecord`, ...
    pub kind: String,
    /// No `?` or `*` suffix.
    pub required: bool,
    /// A `*` or `+` suffix: a list.
    pub multivalue: bool,
    pub autofill: bool,
    pub cli_name: Option<String>,
    /// `default=...` as written.
    pub default: Option<String>,
    /// A `StrEnum`'s values.
    pub values: Option<Vec<String>>,
    pub deprecated: bool,
}

impl Param {
    /// Whether the server must be sent this parameter: required, and not
    /// filled in by the server from a default.
    pub fn must_be_sent(&self) -> bool {
        self.required && !self.autofill && self.default.is_none()
    }

    /// The name FreeIPA's errors use for conversions and validations
    /// (`Param.get_param_name`).
    fn error_name(&self) -> &str {
        self.cli_name.as_deref().unwrap_or(&self.name)
    }
}

/// One `command:` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub name: String,
    pub version: u32,
    pub args: Vec<Param>,
    pub options: Vec<Param>,
    pub outputs: Vec<String>,
}

impl Command {
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.name, self.version)
    }

    pub fn param(&self, name: &str) -> Option<&Param> {
        self.args
            .iter()
            .chain(self.options.iter())
            .find(|p| p.name == name)
    }
}

/// The parsed file.
#[derive(Debug, Clone)]
pub struct Api {
    commands: BTreeMap<String, Command>,
    /// `default:` lines: bare name -> `name/version`.
    defaults: BTreeMap<String, String>,
}

/// A call that passed every check: the command and its parameters as the
/// server would hand them to the command (converted, defaults filled).
#[derive(Debug, Clone)]
pub struct Checked<'a> {
    pub command: &'a Command,
    pub params: BTreeMap<String, Value>,
}

impl Checked<'_> {
    pub fn str(&self, name: &str) -> Option<&str> {
        self.params.get(name).and_then(Value::as_str)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.params
            .get(name)
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// A multivalue parameter's values (empty when not given).
    pub fn list(&self, name: &str) -> Vec<String> {
        match self.params.get(name) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        }
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        self.params.get(name).and_then(Value::as_i64)
    }
}

/// Where `API.txt` is: `$FREEIPA_API_TXT`, else `freeipa/API.txt` in the
/// specs folder, `$SITE_SPECS` (as for the DigitalOcean spec) or
/// `../shared/specs` beside the repository root.
pub fn api_txt_path() -> PathBuf {
    if let Some(path) = std::env::var_os("FREEIPA_API_TXT") {
        return PathBuf::from(path);
    }
    let specs = std::env::var_os("SITE_SPECS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/specs"));
    specs.join("freeipa/API.txt")
}

/// For tests: the API, or None with a line saying how to get it. Under
/// `CI` a missing file is a failure.
pub fn load_for_tests() -> Option<Api> {
    let path = api_txt_path();
    if !path.exists() {
        let reason = format!(
            "skipping: FreeIPA's API.txt is not at {} (set FREEIPA_API_TXT or SITE_SPECS, or \
             copy API.txt from the freeipa/freeipa repository root to ../shared/specs/freeipa/)",
            path.display()
        );
        site_test_skip::skip(&reason);
        return None;
    }
    Some(Api::load(&path).unwrap_or_else(|e| panic!("{e:#}")))
}

impl Api {
    pub fn load(path: &Path) -> anyhow::Result<Api> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read FreeIPA's API.txt at {} (set FREEIPA_API_TXT to its path)",
                path.display()
            )
        })?;
        Api::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Api> {
        let mut commands = BTreeMap::new();
        let mut defaults = BTreeMap::new();
        let mut current: Option<Command> = None;
        for (number, line) in text.lines().enumerate() {
            let at = || format!("line {}", number + 1);
            let Some((key, value)) = line.split_once(": ") else {
                if line.trim().is_empty() {
                    continue;
                }
                bail!("{}: not a `key: value` line: {line:?}", at());
            };
            match key {
                "command" => {
                    if let Some(done) = current.take() {
                        commands.insert(done.full_name(), done);
                    }
                    let (name, version) = value
                        .split_once('/')
                        .ok_or_else(|| anyhow!("{}: command without a version", at()))?;
                    current = Some(Command {
                        name: name.to_owned(),
                        version: version
                            .parse()
                            .map_err(|_| anyhow!("{}: bad version {version:?}", at()))?,
                        args: Vec::new(),
                        options: Vec::new(),
                        outputs: Vec::new(),
                    });
                }
                "args" => {}
                "arg" | "option" | "output" => {
                    let command = current
                        .as_mut()
                        .ok_or_else(|| anyhow!("{}: {key} outside a command", at()))?;
                    if key == "output" {
                        let (_, spec, _) =
                            split_call(value).map_err(|e| anyhow!("{}: {e}", at()))?;
                        command.outputs.push(spec);
                    } else {
                        let param = parse_param(value).map_err(|e| anyhow!("{}: {e}", at()))?;
                        if key == "arg" {
                            command.args.push(param);
                        } else {
                            command.options.push(param);
                        }
                    }
                }
                "default" => {
                    if let Some(done) = current.take() {
                        commands.insert(done.full_name(), done);
                    }
                    if let Some((name, _)) = value.split_once('/') {
                        defaults.insert(name.to_owned(), value.to_owned());
                    }
                }
                "capability" => {}
                other => bail!("{}: unknown key {other:?}", at()),
            }
        }
        if let Some(done) = current.take() {
            commands.insert(done.full_name(), done);
        }
        if commands.is_empty() {
            bail!("no `command:` blocks: this is not FreeIPA's API.txt");
        }
        Ok(Api { commands, defaults })
    }

    pub fn commands(&self) -> impl Iterator<Item = &Command> {
        self.commands.values()
    }

    /// `name/1` or a bare `name` (its `default:` version), as
    /// `rpcserver._get_command` resolves it.
    pub fn command(&self, method: &str) -> Option<&Command> {
        if method.contains('/') {
            return self.commands.get(method);
        }
        let full = self
            .defaults
            .get(method)
            .cloned()
            .unwrap_or_else(|| format!("{method}/1"));
        self.commands.get(&full)
    }

    /// Every check the server makes before running a command, answering
    /// as it would.
    pub fn check(&self, method: &str, params: &Value) -> Result<(), IpaError> {
        self.validate(method, params).map(|_| ())
    }

    /// [`Api::check`], returning the converted parameters.
    pub fn validate(&self, method: &str, params: &Value) -> Result<Checked<'_>, IpaError> {
        let (args, options) = split_params(params)?;
        let command = self.command(method).ok_or_else(|| {
            IpaError::new(
                905,
                "CommandError",
                format!("unknown command '{method}'"),
                json!({ "name": method }),
            )
        })?;
        if let Some(version) = options.get("version") {
            check_version(version)?;
        }
        let max_args = match command.args.last() {
            Some(last) if last.multivalue => None,
            _ => Some(command.args.len()),
        };
        if let Some(max) = max_args {
            if args.len() > max {
                return Err(if max == 0 {
                    IpaError::new(
                        3003,
                        "ZeroArgumentError",
                        format!("command '{}' takes no arguments", command.name),
                        json!({ "name": command.name }),
                    )
                } else {
                    let plural = if max == 1 { "argument" } else { "arguments" };
                    IpaError::new(
                        3004,
                        "MaxArgumentError",
                        format!("command '{}' takes at most {max} {plural}", command.name),
                        json!({ "name": command.name, "count": max }),
                    )
                });
            }
        }
        let mut raw: BTreeMap<String, Value> = BTreeMap::new();
        for (key, value) in options {
            if command.param(key).is_none() {
                return Err(IpaError::new(
                    3005,
                    "OptionError",
                    format!("Unknown option: {key}"),
                    json!({ "option": key }),
                ));
            }
            raw.insert(key.clone(), value.clone());
        }
        // Positional values; a multivalue last argument takes the rest.
        let mut overlap = Vec::new();
        for (i, arg) in command.args.iter().enumerate() {
            if i >= args.len() {
                break;
            }
            let value = if arg.multivalue {
                if args.len() == i + 1 && args[i].is_array() {
                    args[i].clone()
                } else {
                    Value::Array(args[i..].to_vec())
                }
            } else {
                args[i].clone()
            };
            if raw.contains_key(&arg.name) {
                overlap.push(arg.name.clone());
            }
            raw.insert(arg.name.clone(), value);
        }
        if !overlap.is_empty() {
            overlap.sort();
            return Err(IpaError::new(
                3006,
                "OverlapError",
                format!("overlapping arguments and options: {overlap:?}"),
                json!({ "names": overlap }),
            ));
        }
        let mut converted = BTreeMap::new();
        for (name, value) in raw {
            let param = command.param(&name).expect("checked above");
            if let Some(value) = convert(param, &value)? {
                converted.insert(name, value);
            } else {
                converted.insert(name, Value::Null);
            }
        }
        // Validation, in the command's parameter order.
        for param in command.args.iter().chain(command.options.iter()) {
            match converted.get(&param.name) {
                None if param.must_be_sent() => return Err(requirement(param)),
                Some(Value::Null) if param.required => return Err(requirement(param)),
                Some(value) if !value.is_null() => validate(param, value)?,
                _ => {}
            }
        }
        converted.retain(|_, v| !v.is_null());
        for param in command.args.iter().chain(command.options.iter()) {
            if converted.contains_key(&param.name) || !param.autofill {
                continue;
            }
            if let Some(default) = param.default.as_deref().and_then(python_literal) {
                converted.insert(param.name.clone(), default);
            }
        }
        Ok(Checked {
            command,
            params: converted,
        })
    }
}

fn requirement(param: &Param) -> IpaError {
    IpaError::new(
        3007,
        "RequirementError",
        format!("'{}' is required", param.name),
        json!({ "name": param.name }),
    )
}

/// `params` must be `[args, options]`, as `jsonserver.unmarshal` insists.
fn split_params(params: &Value) -> Result<(&Vec<Value>, &Map<String, Value>), IpaError> {
    let json_error = |why: &str| {
        IpaError::new(
            909,
            "JSONError",
            format!("Invalid JSON-RPC request: {why}"),
            json!({ "error": why }),
        )
    };
    let Value::Array(parts) = params else {
        return Err(json_error("params must be a list"));
    };
    if parts.len() != 2 {
        return Err(json_error("params must contain [args, options]"));
    }
    let Value::Array(args) = &parts[0] else {
        return Err(json_error("params[0] (aka args) must be a list"));
    };
    let Value::Object(options) = &parts[1] else {
        return Err(json_error("params[1] (aka options) must be a dict"));
    };
    Ok((args, options))
}

/// Only a different major version is refused (`verify_client_version`).
fn check_version(version: &Value) -> Result<(), IpaError> {
    let text = match version {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let major = text
        .split_once('.')
        .and_then(|(major, minor)| {
            minor.parse::<u32>().ok()?;
            major.parse::<u32>().ok()
        })
        .filter(|major| *major == 2);
    if major.is_none() {
        return Err(IpaError::new(
            901,
            "VersionError",
            format!("{text} client incompatible with {SERVER_API_VERSION} server"),
            json!({ "cver": text, "sver": SERVER_API_VERSION }),
        ));
    }
    Ok(())
}

/// ipalib's `_is_null`: None, empty strings and empty lists are "not given";
/// zero and false are values.
fn is_null(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        // `False` is an int in Python, and ints are values.
        Value::Bool(_) | Value::Number(_) => false,
    }
}

fn conversion(name: &str, error: &str) -> IpaError {
    IpaError::new(
        3008,
        "ConversionError",
        format!("invalid '{name}': {error}"),
        json!({ "name": name, "error": error }),
    )
}

fn validation(name: &str, error: &str) -> IpaError {
    IpaError::new(
        3009,
        "ValidationError",
        format!("invalid '{name}': {error}"),
        json!({ "name": name, "error": error }),
    )
}

/// `Param.convert`: None for null; a multivalue wraps a scalar and drops
/// nulls; a single value must be a scalar.
fn convert(param: &Param, value: &Value) -> Result<Option<Value>, IpaError> {
    if is_null(value) {
        return Ok(None);
    }
    if param.multivalue {
        let items: Vec<&Value> = match value {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        let mut out = Vec::new();
        for item in items {
            if is_null(item) {
                continue;
            }
            out.push(convert_scalar(param, item)?);
        }
        return Ok((!out.is_empty()).then_some(Value::Array(out)));
    }
    convert_scalar(param, value).map(Some)
}

const SCALAR_ERROR: &str = "Only one value is allowed";

fn convert_scalar(param: &Param, value: &Value) -> Result<Value, IpaError> {
    let name = param.name.as_str();
    let kind = param.kind.as_str();
    match kind {
        "Bool" | "Flag" => match value {
            Value::Bool(_) => Ok(value.clone()),
            Value::Number(n) if n.as_i64() == Some(1) => Ok(Value::Bool(true)),
            Value::Number(n) if n.as_i64() == Some(0) => Ok(Value::Bool(false)),
            Value::String(s) if matches!(s.to_lowercase().as_str(), "1" | "true") => {
                Ok(Value::Bool(true))
            }
            Value::String(s) if matches!(s.to_lowercase().as_str(), "0" | "false") => {
                Ok(Value::Bool(false))
            }
            Value::Array(_) => Err(conversion(name, SCALAR_ERROR)),
            _ => Err(conversion(name, "must be True or False")),
        },
        "Int" | "IntEnum" => {
            let error_name = param.error_name();
            match value {
                Value::Number(n) if n.is_i64() || n.is_u64() => Ok(value.clone()),
                Value::Number(n) => Ok(json!(n.as_f64().unwrap_or(0.0) as i64)),
                Value::String(s) => parse_int(s)
                    .map(|n| json!(n))
                    .ok_or_else(|| conversion(error_name, "must be an integer")),
                _ => Err(conversion(error_name, "must be an integer")),
            }
        }
        "Decimal" => match value {
            Value::Number(_) => Ok(value.clone()),
            Value::String(s) if s.parse::<f64>().is_ok() => Ok(value.clone()),
            _ => Err(conversion(param.error_name(), "must be a decimal number")),
        },
        "DNSNameParam" => match value {
            Value::String(s) => {
                check_dns_name(s).map_err(|e| conversion(param.error_name(), &e))?;
                Ok(value.clone())
            }
            Value::Object(o) if o.get("__dns_name__").is_some_and(Value::is_string) => {
                Ok(o["__dns_name__"].clone())
            }
            Value::Array(_) => Err(conversion(name, SCALAR_ERROR)),
            _ => Err(conversion(name, "must be DNS name")),
        },
        "DNParam" => match value {
            Value::String(s) => {
                parse_dn(s).map_err(|e| conversion(param.error_name(), &e))?;
                Ok(value.clone())
            }
            Value::Array(_) => Err(conversion(name, SCALAR_ERROR)),
            _ => Err(conversion(param.error_name(), "incorrect type")),
        },
        "Principal" => match value {
            Value::String(s) => {
                if parse_principal(s).is_none() {
                    return Err(conversion(
                        param.error_name(),
                        &format!("Malformed principal: '{s}'"),
                    ));
                }
                Ok(value.clone())
            }
            _ => Err(conversion(name, "must be Kerberos principal")),
        },
        "CertificateSigningRequest" => {
            let text = binary_text(value)
                .ok_or_else(|| conversion(name, "must be a certificate signing request"))?;
            crate::ca::csr_der(&text).map_err(|e| {
                IpaError::new(
                    4301,
                    "CertificateOperationError",
                    format!("Certificate operation cannot be completed: Failure decoding Certificate Signing Request: {e}"),
                    json!({ "error": format!("Failure decoding Certificate Signing Request: {e}") }),
                )
            })?;
            Ok(Value::String(text))
        }
        "Certificate" => {
            let text =
                binary_text(value).ok_or_else(|| conversion(name, "must be a certificate"))?;
            crate::ca::cert_der_from_base64(&text).map_err(|e| {
                IpaError::new(
                    4302,
                    "CertificateFormatError",
                    format!("Certificate format error: {e}"),
                    json!({ "error": e }),
                )
            })?;
            Ok(Value::String(text))
        }
        // Str and its subclasses: HostPassword, SerialNumber, StrEnum (as
        // text first), the DNS record types.
        _ => match value {
            Value::String(_) => Ok(value.clone()),
            Value::Number(n) if is_str_like(kind) && kind != "StrEnum" => {
                Ok(Value::String(n.to_string()))
            }
            Value::Array(_) => Err(conversion(name, SCALAR_ERROR)),
            Value::Number(_) if kind == "StrEnum" => Err(conversion(name, "incorrect type")),
            _ if is_str_like(kind) => Err(conversion(name, "must be Unicode text")),
            _ => Ok(value.clone()),
        },
    }
}

fn is_str_like(kind: &str) -> bool {
    matches!(
        kind,
        "Str" | "HostPassword" | "Password" | "IA5Str" | "SerialNumber" | "StrEnum"
    ) || kind.ends_with("Record")
}

/// Text or `{"__base64__": ...}`.
fn binary_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("__base64__")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// `Param.validate` rules for the types this simulator knows.
fn validate(param: &Param, value: &Value) -> Result<(), IpaError> {
    if param.deprecated {
        return Err(validation(param.error_name(), "this option is deprecated"));
    }
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    for item in items {
        let text = item.as_str().unwrap_or_default();
        let error = match param.kind.as_str() {
            "StrEnum" => {
                let values = param.values.as_deref().unwrap_or_default();
                (!values.iter().any(|v| v == text)).then(|| {
                    if values.len() == 1 {
                        format!("must be '{}'", values[0])
                    } else {
                        let list: Vec<String> = values.iter().map(|v| format!("'{v}'")).collect();
                        format!("must be one of {}", list.join(", "))
                    }
                })
            }
            "ARecord" => text
                .parse::<Ipv4Addr>()
                .is_err()
                .then(|| "invalid IP address format".to_owned()),
            "PTRRecord" | "NSRecord" | "CNAMERecord" => check_dns_name(text).err(),
            "SRVRecord" => check_srv(text).err(),
            "SerialNumber" => (!is_serial(text)).then(|| "must be an integer".to_owned()),
            "Str" if text.trim() != text => {
                Some("Leading and trailing spaces are not allowed".to_owned())
            }
            _ => None,
        };
        if let Some(error) = error {
            return Err(validation(param.error_name(), &error));
        }
    }
    Ok(())
}

fn parse_int(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.contains('.') {
        return s.parse::<f64>().ok().map(|f| f as i64);
    }
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return i64::from_str_radix(hex, 16).ok();
    }
    s.parse().ok()
}

/// Decimal or 0x-hex digits, of any length (serials may be 128 bits).
fn is_serial(s: &str) -> bool {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()),
        None => !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()),
    }
}

/// A certificate serial number as FreeIPA takes it: decimal or 0x-hex.
pub fn parse_serial(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// A DNS name as `validate_idna_domain` takes it (ASCII only here).
pub fn check_dns_name(s: &str) -> Result<(), String> {
    if s == "@" {
        return Ok(());
    }
    let trimmed = s.strip_suffix('.').unwrap_or(s);
    if trimmed.is_empty() {
        return Err("empty DNS label".into());
    }
    if trimmed.len() > 253 {
        return Err("DNS name is too long".into());
    }
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err("empty DNS label".into());
        }
        if label.len() > 63 {
            return Err("DNS label cannot be longer than 63 characters".into());
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '*')
        {
            return Err(
                "only letters, numbers, '-' and '_' are allowed. DNS label may not start \
                 or end with '-'"
                    .into(),
            );
        }
    }
    Ok(())
}

fn check_srv(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [priority, weight, port, target] = parts.as_slice() else {
        return Err("format must be specified as \"PRIORITY WEIGHT PORT TARGET\"".into());
    };
    for (what, number) in [("priority", priority), ("weight", weight), ("port", port)] {
        if number.parse::<u16>().is_err() {
            return Err(format!("{what}: must be an integer between 0 and 65535"));
        }
    }
    check_dns_name(target)
}

/// `attr=value,attr=value` into pairs.
pub fn parse_dn(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for rdn in s.split(',') {
        let (attr, value) = rdn
            .split_once('=')
            .ok_or_else(|| format!("malformed RDN string = \"{rdn}\""))?;
        let (attr, value) = (attr.trim(), value.trim());
        if attr.is_empty() || value.is_empty() {
            return Err(format!("malformed RDN string = \"{rdn}\""));
        }
        out.push((attr.to_owned(), value.to_owned()));
    }
    Ok(out)
}

/// A Kerberos principal: `[service/]host-or-user[@REALM]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `host`, `HTTP`, ... for a service; None for a user.
    pub service: Option<String>,
    /// The host name of a service principal, or the user name.
    pub name: String,
    pub realm: Option<String>,
}

impl Principal {
    pub fn text(&self, default_realm: &str) -> String {
        let realm = self.realm.as_deref().unwrap_or(default_realm);
        match &self.service {
            Some(service) => format!("{service}/{}@{realm}", self.name),
            None => format!("{}@{realm}", self.name),
        }
    }
}

pub fn parse_principal(s: &str) -> Option<Principal> {
    let (body, realm) = match s.split_once('@') {
        Some((body, realm)) => {
            if realm.is_empty() || realm.contains('@') {
                return None;
            }
            (body, Some(realm.to_owned()))
        }
        None => (s, None),
    };
    if body.is_empty() || body.contains(char::is_whitespace) {
        return None;
    }
    let (service, name) = match body.split_once('/') {
        Some((service, name)) if !service.is_empty() && !name.is_empty() && !name.contains('/') => {
            (Some(service.to_owned()), name.to_owned())
        }
        Some(_) => return None,
        None => (None, body.to_owned()),
    };
    Some(Principal {
        service,
        name,
        realm,
    })
}

/// `Type('spec', key=value, ...)` into its parts.
fn parse_param(text: &str) -> anyhow::Result<Param> {
    let (kind, spec, kwargs) = split_call(text)?;
    let (name, suffix) = match spec.chars().last() {
        Some(c @ ('?' | '*' | '+')) => (spec[..spec.len() - 1].to_owned(), Some(c)),
        _ => (spec.clone(), None),
    };
    let get = |key: &str| {
        kwargs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let values = get("values").map(|list| {
        split_top_level(list.trim_start_matches('[').trim_end_matches(']'))
            .into_iter()
            .filter_map(|v| unquote(&v))
            .collect()
    });
    Ok(Param {
        name,
        kind,
        required: matches!(suffix, None | Some('+')),
        multivalue: matches!(suffix, Some('*' | '+')),
        autofill: get("autofill").as_deref() == Some("True"),
        cli_name: get("cli_name").and_then(|v| unquote(&v)),
        default: get("default"),
        values,
        deprecated: get("deprecated").as_deref() == Some("True"),
    })
}

/// `key=value` pairs of a parameter's repr.
type Kwargs = Vec<(String, String)>;

/// `Type('spec', k=v, ...)` -> (Type, spec, [(k, v)]).
fn split_call(text: &str) -> anyhow::Result<(String, String, Kwargs)> {
    let open = text
        .find('(')
        .ok_or_else(|| anyhow!("no `(` in {text:?}"))?;
    let inner = text[open + 1..]
        .strip_suffix(')')
        .ok_or_else(|| anyhow!("no closing `)` in {text:?}"))?;
    let mut parts = split_top_level(inner).into_iter();
    let spec = parts
        .next()
        .and_then(|s| unquote(&s))
        .ok_or_else(|| anyhow!("no quoted name in {text:?}"))?;
    let kwargs = parts
        .filter_map(|part| {
            let (k, v) = part.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    Ok((text[..open].trim().to_owned(), spec, kwargs))
}

/// Split at commas outside quotes, brackets and angle brackets.
fn split_top_level(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut current = String::new();
    let mut escaped = false;
    for c in text.chars() {
        if let Some(q) = quote {
            current.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                current.push(c);
            }
            '[' | '(' | '<' | '{' => {
                depth += 1;
                current.push(c);
            }
            ']' | ')' | '>' | '}' => {
                depth -= 1;
                current.push(c);
            }
            ',' if depth == 0 => {
                parts.push(current.trim().to_owned());
                current.clear();
            }
            _ => current.push(c),
        }
    }
    if !current.trim().is_empty() {
        parts.push(current.trim().to_owned());
    }
    parts
}

/// `'x'` or `u'x'` -> `x`.
fn unquote(text: &str) -> Option<String> {
    let text = text.trim();
    let text = text.strip_prefix('u').unwrap_or(text);
    let quote = text.chars().next()?;
    if !matches!(quote, '\'' | '"') {
        return None;
    }
    text.strip_prefix(quote)?
        .strip_suffix(quote)
        .map(|s| s.replace("\\'", "'"))
}

/// A `default=` value as JSON, where it is a plain literal.
fn python_literal(text: &str) -> Option<Value> {
    match text {
        "True" => Some(Value::Bool(true)),
        "False" => Some(Value::Bool(false)),
        _ => {
            if let Some(s) = unquote(text) {
                return Some(Value::String(s));
            }
            text.parse::<i64>().ok().map(|n| json!(n))
        }
    }
}

#[cfg(test)]
mod tests;
