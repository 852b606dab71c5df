//! Checks for the fuzz targets that have no fuzzing module in their own crate: the FleetLock
//! request decoding of `coord-reboot` (`examples/reboot/src/fleetlock.rs`), whose decoders are
//! public. See docs/fuzzing.md.

use coord_reboot::fleetlock::{ErrorKind, PROTOCOL_HEADER, check_header, parse_body};
use http::{HeaderMap, HeaderValue};
use serde_json::Value;

/// The longest group name or holder id FleetLock accepts, in bytes (`coord_reboot::MAX_NAME_LEN`).
const MAX_NAME_LEN: usize = 253;

/// FleetLock request bodies and headers. On the input as a body, `parse_body` never panics; what
/// it accepts follows the documented id and group rules and re-encodes to the same request; an
/// id or group error is only given for a body with string `client_params.id`/`group`, the id
/// checked first; a body without them is `InvalidBody`. On the input read as an (id, group) pair
/// encoded as Zincati does, `parse_body` accepts exactly the documented rules: id 1..=253 bytes
/// with no `/` and no control character, group `^[a-zA-Z0-9.-]{1,253}$`. On the input split at
/// `\n` into values of the `fleet-lock-protocol` header, `check_header` accepts exactly when the
/// first value is `true`, ASCII case and surrounding blanks ignored.
///
/// # Errors
///
/// A description of the violated property.
pub fn fleetlock(data: &[u8]) -> Result<(), String> {
    body(data)?;
    pair(data)?;
    header(data)
}

/// The documented id rule.
fn id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_NAME_LEN && !id.chars().any(|c| c == '/' || c.is_control())
}

/// The documented group rule.
fn group_ok(group: &str) -> bool {
    !group.is_empty()
        && group.len() <= MAX_NAME_LEN
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// Zincati's body.
fn zincati_body(id: &str, group: &str) -> Vec<u8> {
    let body = serde_json::json!({"client_params": {"id": id, "group": group}});
    serde_json::to_vec_pretty(&body).unwrap_or_default()
}

fn body(data: &[u8]) -> Result<(), String> {
    let shown = String::from_utf8_lossy(data);
    let fields = serde_json::from_slice::<Value>(data).ok().and_then(|v| {
        let params = v.get("client_params")?;
        let id = params.get("id")?.as_str()?.to_owned();
        let group = params.get("group")?.as_str()?.to_owned();
        Some((id, group))
    });
    match parse_body(data) {
        Ok(params) => {
            let (id, group) = (params.id.as_str(), params.group.as_str());
            if !id_ok(id) || !group_ok(group) {
                return Err(format!("{shown:?}: accepted id {id:?} group {group:?}"));
            }
            if fields.as_ref().map(|(i, g)| (i.as_str(), g.as_str())) != Some((id, group)) {
                return Err(format!(
                    "{shown:?}: accepted as {id:?} {group:?}, reads as {fields:?}"
                ));
            }
            match parse_body(&zincati_body(id, group)) {
                Ok(again) if again == params => {}
                other => return Err(format!("{shown:?}: re-encoded, reads as {other:?}")),
            }
        }
        Err(e) => match (e.kind, &fields) {
            (ErrorKind::InvalidBody, _) => {}
            (ErrorKind::InvalidClientId, Some((id, _))) if !id_ok(id) => {}
            (ErrorKind::InvalidGroup, Some((id, group))) if id_ok(id) && !group_ok(group) => {}
            (kind, _) => {
                return Err(format!(
                    "{shown:?}: {kind:?} ({}), fields {fields:?}",
                    e.value
                ));
            }
        },
    }
    if let (None, Ok(params)) = (&fields, parse_body(data)) {
        return Err(format!(
            "{shown:?}: accepted {params:?} without string id and group"
        ));
    }
    Ok(())
}

fn pair(data: &[u8]) -> Result<(), String> {
    // The first byte splits the rest into id and group.
    let Some((&cut, rest)) = data.split_first() else {
        return Ok(());
    };
    let (id, group) = rest.split_at(usize::from(cut).min(rest.len()));
    let (id, group) = (String::from_utf8_lossy(id), String::from_utf8_lossy(group));
    let verdict = parse_body(&zincati_body(&id, &group)).map_err(|e| e.kind);
    let expected = if !id_ok(&id) {
        Err(ErrorKind::InvalidClientId)
    } else if !group_ok(&group) {
        Err(ErrorKind::InvalidGroup)
    } else {
        Ok((id.as_ref(), group.as_ref()))
    };
    let got = verdict
        .as_ref()
        .map(|p| (p.id.as_str(), p.group.as_str()))
        .map_err(|k| *k);
    if got != expected {
        return Err(format!(
            "id {id:?} group {group:?}: got {got:?}, expected {expected:?}"
        ));
    }
    Ok(())
}

fn header(data: &[u8]) -> Result<(), String> {
    let mut headers = HeaderMap::new();
    let mut first = None;
    for value in data.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            first.get_or_insert(value);
            headers.append(PROTOCOL_HEADER, v);
        }
    }
    let expected = first.is_some_and(|v| {
        let blank = |b: &u8| *b == b' ' || *b == b'\t';
        let start = v.iter().position(|b| !blank(b)).unwrap_or(v.len());
        let end = v.iter().rposition(|b| !blank(b)).map_or(start, |e| e + 1);
        v.get(start..end)
            .is_some_and(|t| t.eq_ignore_ascii_case(b"true"))
    });
    let got = check_header(&headers);
    if got.is_ok() != expected {
        return Err(format!(
            "header values {:?}: check_header says {got:?}",
            headers.get_all(PROTOCOL_HEADER).iter().collect::<Vec<_>>()
        ));
    }
    if let Err(e) = got
        && e.kind != ErrorKind::InvalidProtocolHeader
    {
        return Err(format!("a header error of kind {:?}", e.kind));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleetlock_corpus_passes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/fleetlock");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            fleetlock(&data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            count += 1;
        }
        assert!(count > 0, "{} is empty", dir.display());
    }
}
