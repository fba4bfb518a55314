//! `extract_json`: finds the JSON object or array in a model's free-text reply (code fences, prose around it).

/// How many `{` / `[` positions [`extract_json`] tries before it gives up.
const MAX_JSON_CANDIDATES: usize = 64;

/// Finds the JSON object or array in a model's reply: inside the first ``` code fence if there is one,
/// else the first balanced `{...}` / `[...]` that parses, skipping prose before it and ignoring prose after.
/// Never evaluates anything; the text is only scanned and handed to `serde_json`.
pub fn extract_json(text: &str) -> Result<serde_json::Value, String> {
    if let Some(body) = fenced_block(text)
        && let Ok(value) = first_json_value(body)
    {
        return Ok(value);
    }
    first_json_value(text)
}

/// The body of the first ``` fence (after its info string, such as `json`), up to the closing fence or the
/// end of the text.
fn fenced_block(text: &str) -> Option<&str> {
    let open = text.find("```")?;
    let after = &text[open + 3..];
    let body = &after[after.find('\n')? + 1..];
    Some(match body.find("```") {
        Some(close) => &body[..close],
        None => body,
    })
}

/// The first balanced object or array of `text` that parses as JSON.
fn first_json_value(text: &str) -> Result<serde_json::Value, String> {
    let mut first_error = None;
    let candidates = text.char_indices().filter(|&(_, c)| c == '{' || c == '[').map(|(i, _)| i);
    for start in candidates.take(MAX_JSON_CANDIDATES) {
        let attempt = balanced_span(text, start)
            .and_then(|span| serde_json::from_str::<serde_json::Value>(span).map_err(|e| format!("invalid JSON: {e}")));
        match attempt {
            Ok(value) => return Ok(value),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| "no JSON object or array in the reply".to_string()))
}

/// The balanced `{...}` or `[...]` starting at byte `start`, respecting strings and escapes.
fn balanced_span(text: &str, start: usize) -> Result<&str, String> {
    let bytes = text.as_bytes();
    let mut expected_closers = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    for (offset, &byte) in bytes[start..].iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' => expected_closers.push(b'}'),
            b'[' => expected_closers.push(b']'),
            b'}' | b']' => {
                if expected_closers.pop() != Some(byte) {
                    return Err(format!("unbalanced JSON: unexpected `{}`", byte as char));
                }
                if expected_closers.is_empty() {
                    return Ok(&text[start..start + offset + 1]);
                }
            }
            _ => {}
        }
    }
    Err("truncated JSON: the reply ends inside an object, array or string".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn extract_json_handles_fences_and_prose() {
        assert_eq!(extract_json("```json\n{\"a\": 1}\n```").unwrap(), json!({"a": 1}));
        assert_eq!(extract_json("```\n[1, 2]\n```").unwrap(), json!([1, 2]));
        assert_eq!(extract_json("Sure! Here it is: {\"a\": \"b}\"} Hope that helps {").unwrap(), json!({"a": "b}"}));
        assert_eq!(
            extract_json(r#"{"a": "say \"hi\" {[", "b": [1, {"c": null}]} trailing"#).unwrap(),
            json!({"a": "say \"hi\" {[", "b": [1, {"c": null}]})
        );
        // Prose with brackets before the JSON: the first candidate that parses wins.
        assert_eq!(extract_json("Answer [see below]: {\"x\": true}").unwrap(), json!({"x": true}));
        // Fence without a closing fence, and a fence whose body is not JSON but the text has some after it.
        assert_eq!(extract_json("```json\n{\"a\": [1]}").unwrap(), json!({"a": [1]}));
        assert_eq!(extract_json("```\nnot json\n```\n{\"z\": 0}").unwrap(), json!({"z": 0}));
        assert_eq!(extract_json("{\"emoji\": \"é🙂\"}").unwrap(), json!({"emoji": "é🙂"}));
        assert!(extract_json("no json here").unwrap_err().contains("no JSON"));
        assert!(extract_json("{\"a\": 1").unwrap_err().contains("truncated"));
        assert!(extract_json("{\"a\": 1]").is_err());
        assert!(extract_json("{a: 1}").unwrap_err().contains("invalid JSON"));
    }
}
