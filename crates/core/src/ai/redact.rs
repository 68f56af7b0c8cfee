//! PII redaction: what custos removes from a text before it leaves the database (a prompt, a text
//! to embed). Each kind is a pattern plus, where the format has one, its checksum (Luhn for cards,
//! mod-97 for IBANs) or structural rules (SSN areas, IPv4 octets), so that look-alikes survive:
//! versions, dates, order and invoice ids, UUIDs, hashes, ports, amounts.
//!
//! Placeholders are stable within one call: the same value gets the same `<EMAIL_1>` every time it
//! appears, and [`Redacted::mapping`] gives the originals back so an answer can be mapped to them
//! inside the database.

use regex::Regex;
use std::collections::HashMap;
use std::sync::OnceLock;

/// The kinds of PII custos recognises, in the order they win an overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Jwt,
    Bearer,
    AwsAccessKey,
    AwsSecretKey,
    ApiKey,
    Email,
    Iban,
    Card,
    Ssn,
    Ipv6,
    Ipv4,
    Phone,
    /// A known identity value (a user id or e-mail of the tenant's identities).
    Known,
    /// A tenant's own pattern.
    Custom,
}

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::Jwt,
        Kind::Bearer,
        Kind::AwsAccessKey,
        Kind::AwsSecretKey,
        Kind::ApiKey,
        Kind::Email,
        Kind::Iban,
        Kind::Card,
        Kind::Ssn,
        Kind::Ipv6,
        Kind::Ipv4,
        Kind::Phone,
        Kind::Known,
        Kind::Custom,
    ];

    /// The placeholder's label: `<EMAIL_1>`.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Jwt => "JWT",
            Kind::Bearer => "TOKEN",
            Kind::AwsAccessKey => "AWS_ACCESS_KEY",
            Kind::AwsSecretKey => "AWS_SECRET_KEY",
            Kind::ApiKey => "API_KEY",
            Kind::Email => "EMAIL",
            Kind::Iban => "IBAN",
            Kind::Card => "CARD",
            Kind::Ssn => "SSN",
            Kind::Ipv6 => "IPV6",
            Kind::Ipv4 => "IPV4",
            Kind::Phone => "PHONE",
            Kind::Known => "PERSON",
            Kind::Custom => "REDACTED",
        }
    }

    pub fn from_label(label: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.label() == label)
    }
}

/// A text with its PII replaced, and what each placeholder stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct Redacted {
    pub text: String,
    /// (placeholder, kind, original), in order of first appearance.
    pub mapping: Vec<(String, Kind, String)>,
}

/// Extra rules of a tenant: its own patterns and the identity values it knows.
#[derive(Debug, Default, Clone)]
pub struct Rules {
    pub patterns: Vec<Regex>,
    /// Exact values (user ids, e-mails), matched case-insensitively as whole words.
    pub known: Vec<String>,
}

struct Detectors {
    jwt: Regex,
    bearer: Regex,
    aws_access: Regex,
    aws_secret: Regex,
    api_key: Regex,
    email: Regex,
    iban: Regex,
    card: Regex,
    ssn: Regex,
    ipv6: Regex,
    ipv4: Regex,
    phone: Regex,
}

fn detectors() -> &'static Detectors {
    static D: OnceLock<Detectors> = OnceLock::new();
    D.get_or_init(|| {
        let re = |p: &str| Regex::new(p).unwrap_or_else(|e| panic!("pattern {p}: {e}"));
        Detectors {
            jwt: re(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
            bearer: re(r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{16,}=*)"),
            aws_access: re(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"),
            aws_secret: re(r"(?:^|[^A-Za-z0-9/+])([A-Za-z0-9/+]{40})(?:$|[^A-Za-z0-9/+=])"),
            api_key: re(concat!(
                r"\b(?:sk-(?:proj-|ant-(?:api\d{2}-)?)?[A-Za-z0-9_-]{20,}",
                r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}",
                r"|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}",
                r"|glpat-[A-Za-z0-9_-]{20,}|sk_(?:live|test)_[A-Za-z0-9]{16,}",
                r"|rk_(?:live|test)_[A-Za-z0-9]{16,}|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,})"
            )),
            email: re(
                r"(?i)\b[a-z0-9](?:[a-z0-9._%+-]{0,62}[a-z0-9])?@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}\b",
            ),
            iban: re(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
            card: re(r"\b\d(?:[ -]?\d){12,18}\b"),
            ssn: re(r"\b\d{3}-\d{2}-\d{4}\b"),
            ipv6: re(concat!(
                r"(?i)(?:^|[^0-9a-z:.])(",
                r"(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}",
                r"|(?:[0-9a-f]{1,4}:){1,7}:",
                r"|(?:[0-9a-f]{1,4}:){1,6}:[0-9a-f]{1,4}",
                r"|(?:[0-9a-f]{1,4}:){1,5}(?::[0-9a-f]{1,4}){1,2}",
                r"|(?:[0-9a-f]{1,4}:){1,4}(?::[0-9a-f]{1,4}){1,3}",
                r"|(?:[0-9a-f]{1,4}:){1,3}(?::[0-9a-f]{1,4}){1,4}",
                r"|(?:[0-9a-f]{1,4}:){1,2}(?::[0-9a-f]{1,4}){1,5}",
                r"|[0-9a-f]{1,4}:(?::[0-9a-f]{1,4}){1,6}",
                r"|::(?:[0-9a-f]{1,4}:){0,5}[0-9a-f]{1,4}",
                r"|::(?:ffff:)?(?:\d{1,3}\.){3}\d{1,3}",
                r")(?:$|[^0-9a-z:.])"
            )),
            ipv4: re(r"(?:^|[^0-9.])((?:\d{1,3}\.){3}\d{1,3})(?:$|[^0-9.]|\.(?:$|\s))"),
            phone: re(concat!(
                r"(?:^|[^A-Za-z0-9/.:_#-])(",
                r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}",
                r"|\(\d{2,4}\)[ .-]?\d{2,4}(?:[ .-]\d{2,4}){1,3}",
                r"|0\d{1,4}(?:[ .-]\d{2,4}){2,4}",
                r"|\d{3}[ .-]\d{3}[ .-]\d{4}",
                r")(?:$|[^A-Za-z0-9/_#-]|[.:](?:$|\s))"
            )),
        }
    })
}

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(*d);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Whether the number has a card network's prefix and one of its lengths (Visa, Mastercard,
/// American Express, Discover, JCB, Diners Club, UnionPay).
fn card_network_length(d: &[u8]) -> bool {
    let prefix = |n: usize| d.iter().take(n).fold(0u32, |a, &x| a * 10 + u32::from(x));
    let len = d.len();
    match d.first() {
        Some(4) => matches!(len, 13 | 16 | 19),
        Some(5) => (51..=55).contains(&prefix(2)) && len == 16,
        Some(2) => (2221..=2720).contains(&prefix(4)) && len == 16,
        Some(3) => match prefix(2) {
            34 | 37 => len == 15,
            35 => (3528..=3589).contains(&prefix(4)) && (16..=19).contains(&len),
            30 | 36 | 38 | 39 => (14..=19).contains(&len),
            _ => false,
        },
        Some(6) => {
            (prefix(4) == 6011
                || (644..=649).contains(&prefix(3))
                || prefix(2) == 65
                || prefix(2) == 62)
                && (16..=19).contains(&len)
        }
        _ => false,
    }
}

fn iban_valid(candidate: &str) -> bool {
    let compact: String = candidate.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut remainder = 0u32;
    for c in tail.chars().chain(head.chars()) {
        let value = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='Z' => c as u32 - 'A' as u32 + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

fn ssn_valid(s: &str) -> bool {
    let area: u32 = s[0..3].parse().unwrap_or(0);
    let group: u32 = s[4..6].parse().unwrap_or(0);
    let serial: u32 = s[7..11].parse().unwrap_or(0);
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

fn ipv4_valid(s: &str) -> bool {
    s.split('.')
        .all(|o| o.parse::<u32>().is_ok_and(|v| v <= 255) && (o.len() == 1 || !o.starts_with('0')))
}

/// A 40-character secret key looks random: mixed case and digits, not hex.
fn looks_like_secret(s: &str) -> bool {
    let upper = s.chars().any(|c| c.is_ascii_uppercase());
    let lower = s.chars().any(|c| c.is_ascii_lowercase());
    let digit = s.chars().any(|c| c.is_ascii_digit());
    let hex = s.chars().all(|c| c.is_ascii_hexdigit());
    upper && lower && digit && !hex
}

fn phone_valid(s: &str, text: &str, start: usize) -> bool {
    let digits = s.chars().filter(char::is_ascii_digit).count();
    if !(8..=15).contains(&digits) {
        return false;
    }
    // The shape of an SSN (3-2-4) is never read as a phone number.
    let shape: Vec<usize> = s.split('-').map(str::len).collect();
    if shape == [3, 2, 4] && s.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return false;
    }
    // Dates (2024-01-15, 2024 01 15 12) and ids glued to a word (ORD-2024-001234) are not phones.
    let groups: Vec<&str> = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    if groups.len() >= 3
        && groups[0].len() == 4
        && (groups[0].starts_with("19") || groups[0].starts_with("20"))
        && groups[1].len() == 2
    {
        return false;
    }
    // Part of a longer run of digit groups (an account number, an IBAN's tail) is not a phone.
    let end = start + s.len();
    let digit_before = text[..start]
        .trim_end_matches(' ')
        .ends_with(|c: char| c.is_ascii_digit());
    let digit_after = text[end..]
        .trim_start_matches(' ')
        .starts_with(|c: char| c.is_ascii_digit());
    if digit_before || digit_after {
        return false;
    }
    !labelled_otherwise(text, start)
}

/// Whether the word just before `start` names the number as something that is not personal:
/// "order 555 123 4567", "version 10.2.3.4", "range 100-10-1000".
fn labelled_otherwise(text: &str, start: usize) -> bool {
    let head = text[..start].trim_end_matches([' ', ':', '#']);
    let word: String = head
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<String>()
        .to_lowercase();
    matches!(
        word.as_str(),
        "order"
            | "invoice"
            | "ticket"
            | "id"
            | "version"
            | "ver"
            | "v"
            | "build"
            | "release"
            | "rev"
            | "revision"
            | "ref"
            | "no"
            | "case"
            | "po"
            | "range"
            | "part"
            | "model"
            | "serial"
            | "lot"
            | "sku"
            | "isbn"
    )
}

/// One match: byte range, kind, the text to replace.
type Found = (usize, usize, Kind);

fn find_all(text: &str, rules: &Rules) -> Vec<Found> {
    let d = detectors();
    let mut found: Vec<Found> = Vec::new();
    let mut push_all = |re: &Regex, kind: Kind, group: usize, ok: &dyn Fn(&str, usize) -> bool| {
        for c in re.captures_iter(text) {
            if let Some(m) = c.get(group) {
                if ok(m.as_str(), m.start()) {
                    found.push((m.start(), m.end(), kind));
                }
            }
        }
    };
    let any = |_: &str, _: usize| true;
    push_all(&d.jwt, Kind::Jwt, 0, &any);
    push_all(&d.bearer, Kind::Bearer, 1, &any);
    push_all(&d.aws_access, Kind::AwsAccessKey, 0, &any);
    push_all(&d.aws_secret, Kind::AwsSecretKey, 1, &|s, _| {
        looks_like_secret(s)
    });
    push_all(&d.api_key, Kind::ApiKey, 0, &any);
    push_all(&d.email, Kind::Email, 0, &|s, _| {
        // report@2x.png is a file name: no mail domain ends in a file extension.
        let tld = s.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
        !matches!(
            tld.as_str(),
            "png"
                | "jpg"
                | "jpeg"
                | "gif"
                | "svg"
                | "webp"
                | "pdf"
                | "txt"
                | "css"
                | "js"
                | "json"
                | "html"
                | "htm"
                | "xml"
                | "csv"
                | "zip"
                | "gz"
                | "tar"
                | "log"
                | "md"
        )
    });
    push_all(&d.iban, Kind::Iban, 0, &|s, _| iban_valid(s));
    push_all(&d.card, Kind::Card, 0, &|s, _| {
        let digits: Vec<u8> = s
            .bytes()
            .filter(u8::is_ascii_digit)
            .map(|b| b - b'0')
            .collect();
        card_network_length(&digits) && luhn(&digits)
    });
    push_all(&d.ssn, Kind::Ssn, 0, &|s, start| {
        ssn_valid(s) && !labelled_otherwise(text, start)
    });
    push_all(&d.ipv6, Kind::Ipv6, 1, &|s, _| {
        // Times (12:30:45) and ratios are not addresses: an address has a hex letter, "::" or
        // eight groups.
        s.contains("::") || s.split(':').count() == 8 || s.chars().any(|c| c.is_ascii_alphabetic())
    });
    push_all(&d.ipv4, Kind::Ipv4, 1, &|s, start| {
        // A version's suffix (4.2.0.1-rc) or name (version 10.2.3.4, v2.10.1.0) is not an address's.
        let suffix = text[start + s.len()..].starts_with('-');
        ipv4_valid(s) && !suffix && !labelled_otherwise(text, start)
    });
    for p in &rules.patterns {
        push_all(p, Kind::Custom, 0, &|s, _| !s.is_empty());
    }
    for c in d.phone.captures_iter(text) {
        if let Some(m) = c.get(1) {
            // A closing parenthesis without its opening one is the text's, not the number's.
            let raw = m.as_str();
            let end = if raw.ends_with(')') && !raw.contains('(') {
                m.end() - 1
            } else {
                m.end()
            };
            if phone_valid(&text[m.start()..end], text, m.start()) {
                found.push((m.start(), end, Kind::Phone));
            }
        }
    }
    if !rules.known.is_empty() {
        // ASCII lower-casing changes single bytes only: offsets stay those of the text.
        let haystack = text.to_ascii_lowercase();
        for value in &rules.known {
            let needle = value.to_ascii_lowercase();
            if needle.len() < 3 {
                continue;
            }
            let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            let mut from = 0;
            while let Some(i) = haystack[from..].find(&needle) {
                let (s, e) = (from + i, from + i + needle.len());
                if !word(haystack[..s].chars().next_back()) && !word(haystack[e..].chars().next()) {
                    found.push((s, e, Kind::Known));
                }
                from = e;
            }
        }
    }
    // Earliest first; at one start the longest, then the kind that ranks first.
    found.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    let mut kept: Vec<Found> = Vec::new();
    for f in found {
        match kept.last_mut() {
            Some(last) if f.0 < last.1 => {
                // Overlap: a longer match, or one of a higher-ranked kind covering it, wins.
                if f.1 - f.0 > last.1 - last.0 && f.2 <= last.2 {
                    *last = f;
                }
            }
            _ => kept.push(f),
        }
    }
    kept
}

/// Replaces every PII value in `text` with a placeholder, the same value with the same one.
pub fn redact(text: &str, rules: &Rules) -> Redacted {
    let mut r = Redactor::new(rules);
    let text = r.redact(text);
    Redacted {
        text,
        mapping: r.into_mapping(),
    }
}

/// Redacts several texts (and JSON documents) with one set of placeholders: the same value gets
/// the same placeholder in each.
pub struct Redactor<'r> {
    rules: &'r Rules,
    mapping: Vec<(String, Kind, String)>,
    seen: HashMap<(Kind, String), usize>,
    counts: HashMap<Kind, usize>,
}

impl<'r> Redactor<'r> {
    pub fn new(rules: &'r Rules) -> Redactor<'r> {
        Redactor {
            rules,
            mapping: Vec::new(),
            seen: HashMap::new(),
            counts: HashMap::new(),
        }
    }

    pub fn redact(&mut self, text: &str) -> String {
        let found = find_all(text, self.rules);
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end, kind) in found {
            out.push_str(&text[at..start]);
            let value = &text[start..end];
            let key = (kind, value.to_string());
            let index = match self.seen.get(&key) {
                Some(&i) => i,
                None => {
                    let n = self.counts.entry(kind).or_insert(0);
                    *n += 1;
                    let placeholder = format!("<{}_{}>", kind.label(), n);
                    self.mapping.push((placeholder, kind, value.to_string()));
                    self.seen.insert(key, self.mapping.len() - 1);
                    self.mapping.len() - 1
                }
            };
            out.push_str(&self.mapping[index].0);
            at = end;
        }
        out.push_str(&text[at..]);
        out
    }

    /// A JSON document with every string and object key redacted, each on its own: redacting
    /// the document's text instead would see `\n` escapes glued to the values that follow them.
    pub fn redact_json(&mut self, v: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::String(s) => Value::String(self.redact(s)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.redact_json(x)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| (self.redact(k), self.redact_json(x)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// (placeholder, kind, original), in order of first appearance.
    pub fn into_mapping(self) -> Vec<(String, Kind, String)> {
        self.mapping
    }
}

/// The words of `texts` that could be identity values (user ids), to look up once for a whole
/// batch: every run of letters, digits and `._-@+` (`user=alice` gives `alice`, `actor:bob.k`
/// gives `bob.k`), its parts around `@`, and each as written and in lower case.
pub fn identity_candidates(texts: &[&str]) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    let mut add = |w: &str| {
        let w = w.trim_matches(|c: char| c == '.' || c == '-' || c == '+');
        if (3..=256).contains(&w.len()) {
            words.push(w.to_string());
            words.push(w.to_ascii_lowercase());
        }
    };
    for text in texts {
        for token in text.split(|c: char| !(c.is_alphanumeric() || "._-@+".contains(c))) {
            add(token);
            if token.contains('@') {
                token.split('@').for_each(&mut add);
            }
        }
    }
    words.sort_unstable();
    words.dedup();
    words
}

/// Puts the originals back into a text that carries placeholders of `mapping` (an answer).
pub fn restore(text: &str, mapping: &[(String, Kind, String)]) -> String {
    let mut out = text.to_string();
    // Longest placeholders first, so that <EMAIL_1> never matches inside <EMAIL_12>.
    let mut order: Vec<&(String, Kind, String)> = mapping.iter().collect();
    order.sort_by_key(|m| std::cmp::Reverse(m.0.len()));
    for (placeholder, _, original) in order {
        out = out.replace(placeholder.as_str(), original);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(Kind, String)> {
        redact(text, &Rules::default())
            .mapping
            .into_iter()
            .map(|(_, k, v)| (k, v))
            .collect()
    }

    #[test]
    fn identity_candidates_split_as_the_matcher_does() {
        let words = identity_candidates(&["user=Alice actor:bob.k (carol@corp) to"]);
        for w in ["Alice", "alice", "bob.k", "carol@corp", "carol", "corp"] {
            assert!(words.contains(&w.to_string()), "{w} in {words:?}");
        }
        assert!(!words.iter().any(|w| w == "to" || w.contains('=')));
    }

    #[test]
    fn json_strings_are_redacted_one_by_one_with_shared_placeholders() {
        let input = serde_json::json!({"note": "call\n+1 415 555 0199, SSN\n123-45-6789",
                                       "cc": ["ana@example.com"], "ana@example.com": 1});
        let rules = Rules::default();
        let mut r = Redactor::new(&rules);
        let out = r.redact_json(&input).to_string();
        let again = r.redact("ana@example.com");
        assert!(
            !out.contains("555 0199") && !out.contains("123-45-6789"),
            "{out}"
        );
        assert!(!out.contains("ana@example.com"), "{out}");
        assert_eq!(again, "<EMAIL_1>", "one placeholder across texts");
        assert_eq!(r.into_mapping().len(), 3);
    }

    #[test]
    fn each_kind_is_found_and_placeholders_are_stable() {
        let r = redact(
            "mail ana@example.com, then ana@example.com again; bob@corp.io too",
            &Rules::default(),
        );
        assert_eq!(
            r.text,
            "mail <EMAIL_1>, then <EMAIL_1> again; <EMAIL_2> too"
        );
        assert_eq!(
            restore(&r.text, &r.mapping),
            "mail ana@example.com, then ana@example.com again; bob@corp.io too"
        );
        assert_eq!(
            kinds("card 4111 1111 1111 1111 ok"),
            [(Kind::Card, "4111 1111 1111 1111".into())]
        );
        assert_eq!(
            kinds("IBAN DE89 3704 0044 0532 0130 00."),
            [(Kind::Iban, "DE89 3704 0044 0532 0130 00".into())]
        );
        assert_eq!(
            kinds("ssn 123-45-6789"),
            [(Kind::Ssn, "123-45-6789".into())]
        );
        assert_eq!(
            kinds("from 192.168.1.20 at noon"),
            [(Kind::Ipv4, "192.168.1.20".into())]
        );
        assert_eq!(
            kinds("from 2001:db8::8a2e:370:7334 now"),
            [(Kind::Ipv6, "2001:db8::8a2e:370:7334".into())]
        );
        assert_eq!(
            kinds("call +44 20 7946 0958 today"),
            [(Kind::Phone, "+44 20 7946 0958".into())]
        );
        assert_eq!(
            kinds("(call +44 20 7946 0958)"),
            [(Kind::Phone, "+44 20 7946 0958".into())]
        );
        assert_eq!(
            kinds("key AKIAIOSFODNN7EXAMPLE"),
            [(Kind::AwsAccessKey, "AKIAIOSFODNN7EXAMPLE".into())]
        );
        assert_eq!(
            kinds("secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            [(
                Kind::AwsSecretKey,
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into()
            )]
        );
    }

    #[test]
    fn look_alikes_survive() {
        for text in [
            "version 1.2.3 and v2.10.1.0",
            "on 2024-01-15 at 12:30:45",
            "order ORD-2024-001234 and invoice INV-20240115-0042",
            "id 550e8400-e29b-41d4-a716-446655440000",
            "sha1 2fd4e1c67a2d28fced849ee1bb76e7391b93eb12",
            "listening on :8080 and port 5432",
            "total 1,234,567.89 EUR",
            "card-like 4111 1111 1111 1112 fails Luhn",
            "ssn-like 000-12-3456 and 666-12-3456",
            "IBAN-like DE89 3704 0044 0532 0130 01",
        ] {
            assert_eq!(kinds(text), [], "{text}");
        }
    }

    #[test]
    fn tenant_rules_and_known_values_are_redacted() {
        let rules = Rules {
            patterns: vec![Regex::new(r"EMP-\d{5}").unwrap()],
            known: vec!["jdoe".into(), "Jane.Doe@Acme.example".into()],
        };
        let r = redact(
            "EMP-12345 is jdoe (jane.doe@acme.example), not jdoes",
            &rules,
        );
        assert_eq!(r.text, "<REDACTED_1> is <PERSON_1> (<EMAIL_1>), not jdoes");
    }
}
