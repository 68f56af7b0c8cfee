//! Registered AI tasks: a prompt template filled with the task's input, an answer that must be a
//! JSON document valid against the task's JSON Schema (the `jsonschema` crate), one repair round
//! for an invalid answer, and a rule-based answer that fills the same schema from the input
//! alone when the model cannot (or the provider is `local`).

use serde_json::{json, Map, Value};

/// Where a template takes its input: `{{input}}`, the task's input as JSON.
pub const INPUT_SLOT: &str = "{{input}}";

/// The most errors of one answer quoted back to the model (and into messages).
const ERRORS_QUOTED: usize = 5;

/// A task's answer schema, compiled once per call.
pub struct AnswerSchema {
    validator: jsonschema::Validator,
    schema: Value,
}

impl AnswerSchema {
    /// Compiles `schema`; refuses one that is not a JSON Schema, refers to documents elsewhere
    /// (no file or network is ever read: custos is built without those resolvers), or does not
    /// describe a JSON object.
    pub fn compile(schema: &Value) -> Result<AnswerSchema, String> {
        if schema.get("type").and_then(Value::as_str) != Some("object") {
            return Err("the answer schema must have \"type\": \"object\"".into());
        }
        let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
        Ok(AnswerSchema {
            validator,
            schema: schema.clone(),
        })
    }

    /// The answer's errors, each with where it is (`/severity: "urgent" is not one of ...`);
    /// empty when the answer is valid.
    pub fn errors(&self, answer: &Value) -> Vec<String> {
        self.validator
            .iter_errors(answer)
            .take(ERRORS_QUOTED)
            .map(|e| {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() { "/".to_string() } else { at };
                format!("{at}: {e}")
            })
            .collect()
    }

    pub fn schema(&self) -> &Value {
        &self.schema
    }
}

/// The user message of a task: the template with `{{input}}` replaced by the input as JSON.
pub fn render(template: &str, input: &Value) -> String {
    template.replace(INPUT_SLOT, &input.to_string())
}

/// The system prompt sent with every task: the task's own, then the contract of the answer.
pub fn system_prompt(task_system: &str, schema: &Value) -> String {
    format!(
        "{task_system}\n\nAnswer with one JSON object and nothing else, valid against this JSON Schema:\n{schema}\n\
         Placeholders such as <EMAIL_1> stand for redacted values: keep them as they are."
    )
}

/// The message that asks for a corrected answer after an invalid one.
pub fn repair_prompt(user: &str, previous: &str, errors: &[String]) -> String {
    let previous: String = previous.chars().take(4000).collect();
    format!(
        "{user}\n\nYour previous answer was not valid:\n{previous}\n\nErrors:\n- {}\n\n\
         Reply again with only the corrected JSON object.",
        errors.join("\n- ")
    )
}

/// The JSON object in a model's answer text: the whole text, else inside a ``` fence, else from
/// the first `{` to the last `}`.
pub fn extract_json(text: &str) -> Option<Value> {
    let object = |s: &str| {
        serde_json::from_str::<Value>(s.trim())
            .ok()
            .filter(Value::is_object)
    };
    if let Some(v) = object(text) {
        return Some(v);
    }
    if let Some(start) = text.find("```") {
        let rest = &text[start + 3..];
        let rest = rest.strip_prefix("json").unwrap_or(rest);
        if let Some(end) = rest.find("```") {
            if let Some(v) = object(&rest[..end]) {
                return Some(v);
            }
        }
    }
    let (start, end) = (text.find('{')?, text.rfind('}')?);
    (start < end).then(|| object(&text[start..=end])).flatten()
}

/// What the rule-based answerer reads from an input: its text (every string value, in order)
/// and the length of its longest array (a count of the things it lists).
struct Facts {
    text: String,
    largest_list: usize,
}

fn facts(input: &Value) -> Facts {
    // Each string once: a list of twelve identical actions says it once in a summary.
    fn walk<'v>(v: &'v Value, f: &mut Facts, seen: &mut std::collections::HashSet<&'v str>) {
        match v {
            Value::String(s) if seen.insert(s) => {
                if !f.text.is_empty() {
                    f.text.push_str(". ");
                }
                f.text.push_str(s);
            }
            Value::Array(a) => {
                f.largest_list = f.largest_list.max(a.len());
                a.iter().for_each(|x| walk(x, f, seen));
            }
            Value::Object(o) => o.values().for_each(|x| walk(x, f, seen)),
            _ => {}
        }
    }
    let mut f = Facts {
        text: String::new(),
        largest_list: 0,
    };
    walk(input, &mut f, &mut std::collections::HashSet::new());
    f
}

/// The most frequent words of a text (letters, at least four), most frequent first, ties in
/// order of first appearance.
fn keywords(text: &str, n: usize) -> Vec<String> {
    let mut counts: Vec<(String, usize, usize)> = Vec::new();
    for (position, word) in text
        .split(|c: char| !c.is_alphanumeric() && c != '_' && c != '.')
        .map(|w| w.trim_matches('.').to_lowercase())
        .filter(|w| w.chars().count() >= 4 && w.chars().any(char::is_alphabetic))
        .enumerate()
    {
        match counts.iter_mut().find(|c| c.0 == word) {
            Some(c) => c.1 += 1,
            None => counts.push((word, 1, position)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.2.cmp(&b.2)));
    counts.into_iter().take(n).map(|c| c.0).collect()
}

fn truncate_chars(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The first sentences of the input's text, up to `max` characters: an extractive summary.
fn summary(text: &str, max: usize) -> String {
    if text.trim().is_empty() {
        return "No details were given.".to_string();
    }
    let mut out = String::new();
    for sentence in text.split_inclusive(['.', '!', '?', '\n']) {
        if out.chars().count() + sentence.chars().count() > max && !out.is_empty() {
            break;
        }
        out.push_str(sentence);
    }
    truncate_chars(out.trim(), max)
}

/// A value for a string property, by its name and limits.
fn string_for(name: &str, schema: &Value, facts: &Facts, now: &str) -> Value {
    let max = schema["maxLength"].as_u64().map_or(400, |m| m as usize);
    // Beyond the cap the string stays short and the schema unfilled (not gigabytes of dots).
    let min = (schema["minLength"].as_u64().unwrap_or(0) as usize).min(MAX_FILL_CHARS + 1);
    let name = name.to_lowercase();
    let mut s = match schema["format"].as_str() {
        Some("date-time") => now.to_string(),
        Some("date") => now.chars().take(10).collect(),
        _ if name.contains("title") || name.contains("headline") || name.contains("label") => facts
            .text
            .split_whitespace()
            .take(8)
            .collect::<Vec<_>>()
            .join(" "),
        _ if name.contains("action") || name.contains("recommend") || name.contains("next") => {
            "Review the listed items manually; this answer was made by rules, not by a model."
                .to_string()
        }
        _ => summary(&facts.text, max),
    };
    if s.is_empty() {
        s = "none".to_string();
    }
    let have = s.chars().count();
    if have < min && min <= MAX_FILL_CHARS {
        s.push_str(&".".repeat(min - have));
    }
    Value::String(truncate_chars(&s, max))
}

fn number_for(name: &str, schema: &Value, facts: &Facts, integer: bool) -> Value {
    let name = name.to_lowercase();
    let counted = name.contains("count") || name.contains("total") || name.contains("number");
    let mut x = if counted {
        facts.largest_list as f64
    } else {
        0.0
    };
    if let Some(lo) = schema["minimum"].as_f64() {
        x = x.max(lo);
    }
    if let Some(lo) = schema["exclusiveMinimum"].as_f64() {
        x = x.max(if integer { lo.floor() + 1.0 } else { lo + 1e-6 });
    }
    if let Some(hi) = schema["maximum"].as_f64() {
        x = x.min(hi);
    }
    if integer {
        json!(x.round() as i64)
    } else {
        json!(x)
    }
}

/// The choice among enum values: the first one the input names (as a whole word), else the
/// schema's default, else the first.
fn choose(values: &[Value], schema: &Value, facts: &Facts) -> Value {
    let text = facts.text.to_lowercase();
    let named = values.iter().find(|v| {
        v.as_str().is_some_and(|s| {
            let s = s.to_lowercase();
            !s.is_empty()
                && text.match_indices(&s).any(|(i, _)| {
                    let before = text[..i].chars().next_back();
                    let after = text[i + s.len()..].chars().next();
                    !before.is_some_and(char::is_alphanumeric)
                        && !after.is_some_and(char::is_alphanumeric)
                })
        })
    });
    named
        .or_else(|| schema.get("default").filter(|d| values.contains(d)))
        .or_else(|| values.first())
        .cloned()
        .unwrap_or(Value::Null)
}

/// Limits of what the rule-based answerer makes, whatever a schema asks: items of one list,
/// characters of one string, values in all. A schema that needs more cannot be filled (and its
/// task is refused when registered).
const MAX_FILL_ITEMS: usize = 100;
const MAX_FILL_CHARS: usize = 10_000;
const MAX_FILL_VALUES: usize = 10_000;
const MAX_FILL_DEPTH: usize = 16;

struct Filler<'a> {
    facts: Facts,
    now: &'a str,
    /// Values that may still be made.
    budget: usize,
}

impl Filler<'_> {
    fn fill(&mut self, name: &str, schema: &Value, depth: usize) -> Value {
        if depth > MAX_FILL_DEPTH || self.budget == 0 {
            return Value::Null;
        }
        self.budget -= 1;
        if let Some(c) = schema.get("const") {
            return c.clone();
        }
        if let Some(values) = schema["enum"].as_array() {
            return choose(values, schema, &self.facts);
        }
        let kind = match &schema["type"] {
            Value::String(t) => t.as_str(),
            Value::Array(ts) => ts
                .iter()
                .filter_map(Value::as_str)
                .find(|t| *t != "null")
                .unwrap_or("null"),
            _ => "string",
        };
        match kind {
            "object" => {
                let mut out = Map::new();
                if let Some(properties) = schema["properties"].as_object() {
                    for (key, sub) in properties {
                        let v = self.fill(key, sub, depth + 1);
                        out.insert(key.clone(), v);
                    }
                }
                Value::Object(out)
            }
            "array" => self.list(name, schema, depth),
            "string" => string_for(name, schema, &self.facts, self.now),
            "integer" => number_for(name, schema, &self.facts, true),
            "number" => number_for(name, schema, &self.facts, false),
            "boolean" => Value::Bool(false),
            _ => Value::Null,
        }
    }

    fn list(&mut self, name: &str, schema: &Value, depth: usize) -> Value {
        let items = &schema["items"];
        let min = (schema["minItems"].as_u64().unwrap_or(0) as usize).min(MAX_FILL_ITEMS + 1);
        let max = schema["maxItems"].as_u64().map_or(5, |m| m as usize);
        let words = items["type"] == "string" && items.get("enum").is_none();
        let lower = name.to_lowercase();
        let steps = ["step", "action", "recommend"]
            .iter()
            .any(|w| lower.contains(w));
        let mut list: Vec<Value> = if words && steps && max > 0 {
            vec![string_for("next action", items, &self.facts, self.now)]
        } else if words {
            keywords(&self.facts.text, max.min(5).max(min))
                .into_iter()
                .map(|w| {
                    let word = Facts {
                        text: w,
                        largest_list: 0,
                    };
                    string_for(
                        name,
                        &json!({"maxLength": items["maxLength"]}),
                        &word,
                        self.now,
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        while list.len() < min && self.budget > 0 {
            let v = match list.first() {
                Some(first) if words && steps => first.clone(),
                _ => self.fill(name, items, depth + 1),
            };
            list.push(v);
        }
        Value::Array(list)
    }
}

/// The rule-based answer of a task: every property of the schema filled from the input alone
/// (strings with the input's first sentences, lists with its most frequent words, counts with the
/// length of its longest list, enums with the first value the input names). `now` fills
/// date-time fields. Deterministic; valid whenever the schema asks only for what these rules can
/// make, within their limits (checked when a task is registered).
pub fn rule_based_answer(schema: &Value, input: &Value, now: &str) -> Value {
    let mut filler = Filler {
        facts: facts(input),
        now,
        budget: MAX_FILL_VALUES,
    };
    filler.fill("", schema, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triage() -> Value {
        json!({
            "type": "object",
            "required": ["summary", "severity", "topics", "affected_count", "escalate"],
            "additionalProperties": false,
            "properties": {
                "summary": {"type": "string", "maxLength": 120},
                "severity": {"type": "string", "enum": ["low", "medium", "high", "critical"], "default": "medium"},
                "topics": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
                "affected_count": {"type": "integer", "minimum": 0},
                "escalate": {"type": "boolean"},
                "when": {"type": "string", "format": "date-time"}
            }
        })
    }

    #[test]
    fn the_rule_based_answer_fills_the_schema_from_the_input() {
        let schema = AnswerSchema::compile(&triage()).unwrap();
        let input = json!({"events": [
            {"action": "export", "note": "Bulk export of invoices by <EMAIL_1>. Critical volume."},
            {"action": "export", "note": "Second export of invoices."}
        ]});
        let answer = rule_based_answer(schema.schema(), &input, "2026-12-02T10:00:00Z");
        assert_eq!(schema.errors(&answer), Vec::<String>::new(), "{answer}");
        assert_eq!(answer["severity"], "critical");
        assert_eq!(answer["affected_count"], 2);
        assert_eq!(answer["topics"][0], "export");
        assert!(answer["summary"]
            .as_str()
            .unwrap()
            .starts_with("export. Bulk export"));
        assert_eq!(answer["when"], "2026-12-02T10:00:00Z");
        // Without a named severity the default is taken; and the same input, the same answer.
        let calm = json!({"note": "nothing"});
        assert_eq!(
            rule_based_answer(schema.schema(), &calm, "t")["severity"],
            "medium"
        );
        assert_eq!(
            rule_based_answer(schema.schema(), &input, "t"),
            rule_based_answer(schema.schema(), &input, "t")
        );
    }

    #[test]
    fn what_a_schema_asks_beyond_the_limits_is_not_made() {
        let huge = json!({"type": "object", "required": ["s", "l"], "properties": {
            "s": {"type": "string", "minLength": 1_000_000_000u64},
            "l": {"type": "array", "minItems": 100_000_000u64, "items": {"type": "array", "minItems": 100_000_000u64, "items": {"type": "integer"}}}}});
        let schema = AnswerSchema::compile(&huge).unwrap();
        let answer = rule_based_answer(schema.schema(), &json!({}), "t");
        assert!(answer.to_string().len() < 1_000_000, "bounded");
        assert!(!schema.errors(&answer).is_empty(), "and so not valid");
    }

    #[test]
    fn invalid_answers_are_named_precisely() {
        let schema = AnswerSchema::compile(&triage()).unwrap();
        let errors = schema.errors(&json!({"summary": 3, "severity": "urgent"}));
        assert!(
            errors.iter().any(|e| e.starts_with("/summary:")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.starts_with("/severity:")),
            "{errors:?}"
        );
        assert!(errors.iter().any(|e| e.contains("required")), "{errors:?}");
        assert!(errors.len() <= ERRORS_QUOTED);
    }

    #[test]
    fn schemas_must_describe_objects_and_stay_local() {
        assert!(AnswerSchema::compile(&json!({"type": "string"})).is_err());
        assert!(AnswerSchema::compile(
            &json!({"type": "object", "properties": {"a": {"type": "nope"}}})
        )
        .is_err());
        let remote =
            json!({"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}});
        assert!(
            AnswerSchema::compile(&remote).is_err(),
            "no network resolver"
        );
    }

    #[test]
    fn json_is_found_in_fences_and_prose() {
        assert_eq!(extract_json(r#" {"a": 1} "#), Some(json!({"a": 1})));
        assert_eq!(
            extract_json("Here:\n```json\n{\"a\": 2}\n```\nDone."),
            Some(json!({"a": 2}))
        );
        assert_eq!(
            extract_json("Sure! {\"a\": {\"b\": 3}} hope it helps"),
            Some(json!({"a": {"b": 3}}))
        );
        assert_eq!(extract_json("[1, 2]"), None);
        assert_eq!(extract_json("no json } here {"), None);
    }

    #[test]
    fn prompts_carry_the_input_and_the_errors() {
        let user = render("Triage: {{input}}", &json!({"x": "y"}));
        assert_eq!(user, r#"Triage: {"x":"y"}"#);
        let sys = system_prompt("You triage.", &triage());
        assert!(sys.contains("\"enum\"") && sys.starts_with("You triage."));
        let repair = repair_prompt(
            &user,
            "{\"summary\": 3}",
            &["/summary: 3 is not of type \"string\"".into()],
        );
        assert!(repair.contains("/summary") && repair.starts_with("Triage:"));
    }
}
