//! Declaration identifiers made from headers and file names.

use anyhow::bail;

use super::super::{RESERVED_NAMES, check_identifier};

/// A declaration identifier (`[a-z][a-z0-9_]*`, at most 48 characters, no `__`) made from a
/// header or file name: camelCase and spaces become snake_case, accents are dropped.
pub fn identifier(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        let folded = fold(c);
        if folded.is_empty() {
            out.push('_');
            continue;
        }
        let previous = i.checked_sub(1).map(|p| chars[p]);
        let next = chars.get(i + 1);
        let boundary = c.is_uppercase()
            && previous.is_some_and(|p| {
                p.is_lowercase()
                    || p.is_ascii_digit()
                    || (p.is_uppercase() && next.is_some_and(|n| n.is_lowercase()))
            });
        if boundary {
            out.push('_');
        }
        out.push_str(&folded);
    }
    let mut clean = String::new();
    for c in out.chars() {
        if c == '_' && (clean.is_empty() || clean.ends_with('_')) {
            continue;
        }
        clean.push(c);
    }
    let mut clean = clean.trim_end_matches('_').to_owned();
    if clean.is_empty() {
        clean = "column".into();
    }
    if !clean.starts_with(|c: char| c.is_ascii_lowercase()) {
        clean.insert_str(0, "c_");
    }
    clean.truncate(48);
    clean.trim_end_matches('_').to_owned()
}

/// A letter or digit as lowercase ASCII, accents dropped; "" for anything else.
fn fold(c: char) -> String {
    if c.is_ascii_alphanumeric() {
        return c.to_ascii_lowercase().to_string();
    }
    let base = match c.to_lowercase().next().unwrap_or(c) {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' => "a",
        'æ' => "ae",
        'ç' | 'č' | 'ć' => "c",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ě' => "e",
        'ì' | 'í' | 'î' | 'ï' | 'ī' => "i",
        'ñ' | 'ń' | 'ň' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' => "o",
        'œ' => "oe",
        'ß' => "ss",
        'š' | 'ś' => "s",
        'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' => "u",
        'ý' | 'ÿ' => "y",
        'ž' | 'ź' | 'ż' => "z",
        'ł' => "l",
        'ř' => "r",
        _ => "",
    };
    base.to_owned()
}

/// `name`, or `name_2`, `name_3`... when `taken` has it.
pub(super) fn unique(name: String, taken: &[String]) -> String {
    if !taken.contains(&name) {
        return name;
    }
    (2..)
        .map(|n| {
            let suffix = format!("_{n}");
            let mut base = name.clone();
            base.truncate(48 - suffix.len());
            format!("{}{suffix}", base.trim_end_matches('_'))
        })
        .find(|candidate| !taken.contains(candidate))
        .expect("some suffix is free")
}

/// The dataset name: `--name`, which must already be an identifier, else one made from the file
/// name. Reserved names are refused either way.
pub fn dataset_name(given: Option<&str>, file_name: &str) -> anyhow::Result<String> {
    let name = match given {
        Some(name) => {
            check_identifier("dataset name", name)?;
            name.to_owned()
        }
        None => {
            let stem = file_name
                .trim_end_matches(".gz")
                .trim_end_matches(".csv")
                .trim_end_matches(".tsv");
            identifier(stem)
        }
    };
    if RESERVED_NAMES.contains(&name.as_str()) || name.starts_with("smartcache_") {
        bail!(
            "the dataset name {name:?} is reserved for the service itself: give another with --name"
        );
    }
    Ok(name)
}
