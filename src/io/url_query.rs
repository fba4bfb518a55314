//! `application/x-www-form-urlencoded` query strings (the web UI's and the test Hub's routes).

/// `key=value` pairs of a query string, percent-decoded (`+` is a space); a `%` not followed by two hex
/// digits stays as it is.
pub fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 2;
            }
            (byte, _) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_percent_decoded() {
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            form_pairs("search=tiny%2Dmodel&author=a+b&full"),
            [pair("search", "tiny-model"), pair("author", "a b"), pair("full", "")]
        );
        assert_eq!(form_pairs("q=100%"), [pair("q", "100%")]);
        assert_eq!(form_pairs("a=%zz&b=%4&c=%41"), [pair("a", "%zz"), pair("b", "%4"), pair("c", "A")]);
        assert_eq!(form_pairs("name=donn%C3%A9es"), [pair("name", "données")]);
    }
}
