//! Language codes: ISO 639-1 / 639-3 codes to and from the languages whatlang detects.

use whatlang::Lang;

/// ISO 639-1 codes of every language whatlang detects.
const ISO_639_1: [(Lang, &str); 70] = [
    (Lang::Epo, "eo"),
    (Lang::Eng, "en"),
    (Lang::Rus, "ru"),
    (Lang::Cmn, "zh"),
    (Lang::Spa, "es"),
    (Lang::Por, "pt"),
    (Lang::Ita, "it"),
    (Lang::Ben, "bn"),
    (Lang::Fra, "fr"),
    (Lang::Deu, "de"),
    (Lang::Ukr, "uk"),
    (Lang::Kat, "ka"),
    (Lang::Ara, "ar"),
    (Lang::Hin, "hi"),
    (Lang::Jpn, "ja"),
    (Lang::Heb, "he"),
    (Lang::Yid, "yi"),
    (Lang::Pol, "pl"),
    (Lang::Amh, "am"),
    (Lang::Jav, "jv"),
    (Lang::Kor, "ko"),
    (Lang::Nob, "nb"),
    (Lang::Dan, "da"),
    (Lang::Swe, "sv"),
    (Lang::Fin, "fi"),
    (Lang::Tur, "tr"),
    (Lang::Nld, "nl"),
    (Lang::Hun, "hu"),
    (Lang::Ces, "cs"),
    (Lang::Ell, "el"),
    (Lang::Bul, "bg"),
    (Lang::Bel, "be"),
    (Lang::Mar, "mr"),
    (Lang::Kan, "kn"),
    (Lang::Ron, "ro"),
    (Lang::Slv, "sl"),
    (Lang::Hrv, "hr"),
    (Lang::Srp, "sr"),
    (Lang::Mkd, "mk"),
    (Lang::Lit, "lt"),
    (Lang::Lav, "lv"),
    (Lang::Est, "et"),
    (Lang::Tam, "ta"),
    (Lang::Vie, "vi"),
    (Lang::Urd, "ur"),
    (Lang::Tha, "th"),
    (Lang::Guj, "gu"),
    (Lang::Uzb, "uz"),
    (Lang::Pan, "pa"),
    (Lang::Aze, "az"),
    (Lang::Ind, "id"),
    (Lang::Tel, "te"),
    (Lang::Pes, "fa"),
    (Lang::Mal, "ml"),
    (Lang::Ori, "or"),
    (Lang::Mya, "my"),
    (Lang::Nep, "ne"),
    (Lang::Sin, "si"),
    (Lang::Khm, "km"),
    (Lang::Tuk, "tk"),
    (Lang::Aka, "ak"),
    (Lang::Zul, "zu"),
    (Lang::Sna, "sn"),
    (Lang::Afr, "af"),
    (Lang::Lat, "la"),
    (Lang::Slk, "sk"),
    (Lang::Cat, "ca"),
    (Lang::Tgl, "tl"),
    (Lang::Hye, "hy"),
    (Lang::Cym, "cy"),
];

/// The language for an ISO 639-1 or 639-3 code (case-insensitive); macrolanguage codes map to the variety
/// whatlang detects (`no`/`nor` -> Bokmål, `zho` -> Mandarin, `fas` -> Persian).
pub fn lang_from_code(code: &str) -> Option<Lang> {
    let code = code.trim().to_ascii_lowercase();
    match code.as_str() {
        "no" | "nor" => return Some(Lang::Nob),
        "zho" => return Some(Lang::Cmn),
        "fas" => return Some(Lang::Pes),
        _ => {}
    }
    ISO_639_1.iter().find(|(_, two)| *two == code).map(|(lang, _)| *lang).or_else(|| Lang::from_code(code))
}

/// The ISO 639-1 code of `lang` (every language whatlang detects has one; 639-3 as a fallback).
pub fn lang_code(lang: Lang) -> &'static str {
    ISO_639_1.iter().find(|(l, _)| *l == lang).map_or_else(|| lang.code(), |(_, two)| two)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_codes_resolve() {
        assert_eq!(lang_from_code("en"), Some(Lang::Eng));
        assert_eq!(lang_from_code("eng"), Some(Lang::Eng));
        assert_eq!(lang_from_code("fra"), Some(Lang::Fra));
        assert_eq!(lang_from_code("Fr"), Some(Lang::Fra));
        assert_eq!(lang_from_code("zh"), Some(Lang::Cmn));
        assert_eq!(lang_from_code("xx"), None);
        // Every language whatlang detects has a two-letter code that maps back.
        for lang in Lang::all() {
            assert_eq!(lang_code(*lang).len(), 2, "{lang:?}");
            assert_eq!(lang_from_code(lang_code(*lang)), Some(*lang));
            assert_eq!(lang_from_code(lang.code()), Some(*lang));
        }
    }
}
